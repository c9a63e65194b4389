//! Kernel modules: which drivers a kernel has as modules, their
//! dependencies (read from each module's own `.modinfo` section, since
//! Debian's package ships no modules.dep: depmod runs at install time), and
//! their decompressed bytes for an initramfs (busybox insmod does not
//! decompress .ko.xz).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// No kernel module comes near this; caps decompression of a corrupt one.
const MODULE_MAX: u64 = 64 << 20;

/// A module ready to be put into an initramfs.
#[derive(Debug, Clone)]
pub struct Module {
    /// Module name (`virtio_blk`), as insmod and lsmod know it.
    pub name: String,
    /// Its file in the unpacked package.
    pub path: PathBuf,
    /// Uncompressed ELF bytes.
    pub data: Vec<u8>,
}

/// Parses a kernel `.config`: option -> value (`y`, `m`, or a string).
pub fn parse_config(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// Module name of a module file: basename up to `.ko`, `-` as `_`.
fn module_name(file: &str) -> Option<String> {
    let stem = file.split(".ko").next()?;
    if stem.len() == file.len() {
        return None;
    }
    Some(stem.replace('-', "_"))
}

/// Reads the `key=value` strings of the `.modinfo` section of an ELF64
/// little-endian object (every riscv64 and x86-64 module), with the
/// `object` crate's ELF reader (bounds-checked on untrusted input).
pub fn modinfo(elf: &[u8], what: &str) -> Result<Vec<(String, String)>> {
    use object::read::elf::{FileHeader as _, SectionHeader as _};
    let bad = |m: &str| Error::format(what, format!("not a valid kernel module: {m}"));
    if elf.get(0..4) != Some(&object::elf::ELFMAG[..]) {
        return Err(bad("no ELF magic"));
    }
    if elf.get(4) != Some(&object::elf::ELFCLASS64) || elf.get(5) != Some(&object::elf::ELFDATA2LSB)
    {
        return Err(bad("not 64-bit little-endian ELF"));
    }
    let le = object::LittleEndian;
    // The header is read directly rather than with `FileHeader::parse`,
    // which also insists on e_ident's version byte; the kernel's module
    // loader does not look at it either.
    let (hdr, _) = object::pod::from_bytes::<object::elf::FileHeader64<object::LittleEndian>>(elf)
        .map_err(|_| bad("truncated"))?;
    let sections = hdr
        .sections(le, elf)
        .map_err(|e| bad(&format!("bad section header table ({e})")))?;
    let (_, sh) = sections
        .section_by_name(le, b".modinfo")
        .ok_or_else(|| bad("no .modinfo section"))?;
    let data = sh
        .data(le, elf)
        .map_err(|_| bad("section beyond end of file"))?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The modules of one kernel release in an unpacked linux-image package.
pub struct ModuleTree {
    /// `.../lib/modules/<release>`.
    pub dir: PathBuf,
    pub release: String,
    files: HashMap<String, PathBuf>,
    builtin: HashSet<String>,
}

impl ModuleTree {
    /// Indexes `<dir>` = `lib/modules/<release>` by module name.
    pub fn open(dir: &Path) -> Result<Self> {
        let release = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .ok_or_else(|| {
                Error::Invalid(format!("{} is not a modules directory", dir.display()))
            })?;
        let mut files = HashMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            let rd = fs::read_dir(&d).ctx(|| format!("reading {}", d.display()))?;
            for e in rd {
                let e = e.ctx(|| format!("reading {}", d.display()))?;
                let p = e.path();
                if e.file_type()
                    .ctx(|| format!("reading {}", p.display()))?
                    .is_dir()
                {
                    stack.push(p);
                } else if let Some(n) = module_name(&e.file_name().to_string_lossy()) {
                    files.insert(n, p);
                }
            }
        }
        let builtin = fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| module_name(l.rsplit('/').next().unwrap_or(l)))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            release,
            files,
            builtin,
        })
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    pub fn has_module(&self, name: &str) -> bool {
        self.files.contains_key(&name.replace('-', "_"))
    }

    fn load(&self, name: &str) -> Result<Module> {
        let path = self.files[name].clone();
        let file = path.to_string_lossy().to_string();
        let raw = fs::read(&path).ctx(|| format!("reading {file}"))?;
        let data = if file.ends_with(".ko") {
            raw
        } else {
            crate::deb::decompress_all(&file, &raw, MODULE_MAX, &file)?
        };
        Ok(Module {
            name: name.to_string(),
            path,
            data,
        })
    }

    /// `wanted` modules (those that are not built in) with everything they
    /// depend on, hard (`depends=`) and soft (`softdep=pre:`), in an order
    /// that insmod can load them one by one.
    pub fn closure(&self, wanted: &[&str]) -> Result<Vec<Module>> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for w in wanted {
            self.visit(
                &w.replace('-', "_"),
                true,
                &mut done,
                &mut Vec::new(),
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        required: bool,
        done: &mut HashSet<String>,
        path: &mut Vec<String>,
        order: &mut Vec<Module>,
    ) -> Result<()> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(Error::Invalid(format!(
                "kernel {}: module dependency cycle {} -> {name}",
                self.release,
                path.join(" -> ")
            )));
        }
        // Soft dependencies name modules or aliases; the crypto ones
        // (`crc32c`, `crypto-crc32c`) are provided by `crc32c_generic`.
        let base = name.strip_prefix("crypto_").unwrap_or(name);
        let found = [
            name.to_string(),
            base.to_string(),
            format!("{base}_generic"),
        ]
        .into_iter()
        .find(|n| self.files.contains_key(n) || self.builtin.contains(n));
        let real = if let Some(n) = found {
            if self.builtin.contains(&n) {
                return Ok(());
            }
            n
        } else if required {
            return Err(Error::Invalid(format!(
                "kernel {}: module {name} is neither built in nor in {}",
                self.release,
                self.dir.display()
            )));
        } else {
            return Ok(());
        };
        if done.contains(&real) {
            return Ok(());
        }
        let m = self.load(&real)?;
        let info = modinfo(&m.data, &m.path.to_string_lossy())?;
        if let Some((_, v)) = info.iter().find(|(k, _)| k == "vermagic") {
            if v.split_whitespace().next() != Some(self.release.as_str()) {
                return Err(Error::format(
                    m.path.to_string_lossy(),
                    format!("built for kernel {v:?}, not {}", self.release),
                ));
            }
        }
        path.push(real.clone());
        for (k, v) in &info {
            match k.as_str() {
                "depends" => {
                    for d in v.split(',').filter(|d| !d.is_empty()) {
                        self.visit(&d.replace('-', "_"), true, done, path, order)?;
                    }
                }
                "softdep" => {
                    // "pre: a b post: c": only `pre` ones must be loaded first.
                    let mut pre = false;
                    for w in v.split_whitespace() {
                        match w {
                            "pre:" => pre = true,
                            "post:" => pre = false,
                            d if pre => {
                                self.visit(&d.replace('-', "_"), false, done, path, order)?
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        path.pop();
        done.insert(real);
        order.push(m);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 LE with a .modinfo section holding `info`.
    pub(crate) fn fake_module(info: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for kv in info {
            modinfo.extend_from_slice(kv.as_bytes());
            modinfo.push(0);
        }
        let shstr = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut elf = vec![0u8; 64];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let modinfo_off = elf.len();
        elf.extend_from_slice(&modinfo);
        let shstr_off = elf.len();
        elf.extend_from_slice(&shstr);
        while elf.len() & 7 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, modinfo_off, modinfo.len());
        sh(10, shstr_off, shstr.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn modinfo_reads_fields() {
        let m = fake_module(&["license=GPL", "depends=a,b", "name=x"]);
        let info = modinfo(&m, "x.ko").unwrap();
        assert_eq!(info[1], ("depends".into(), "a,b".into()));
    }

    #[test]
    fn modinfo_rejects_garbage() {
        for (bytes, msg) in [
            (b"nope".to_vec(), "no ELF magic"),
            (b"\x7fELF\x01\x01".to_vec(), "not 64-bit"),
        ] {
            let e = modinfo(&bytes, "x.ko").unwrap_err().to_string();
            assert!(e.contains(msg), "{e}");
        }
        let mut m = fake_module(&["a=b"]);
        m.truncate(m.len() - 40);
        assert!(modinfo(&m, "x.ko").is_err());
        let mut m = fake_module(&["a=b"]);
        // Point the .modinfo section far beyond the file.
        let shoff = u64::from_le_bytes(m[0x28..0x30].try_into().unwrap()) as usize;
        m[shoff + 64 + 24..shoff + 64 + 32].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = modinfo(&m, "x.ko").unwrap_err().to_string();
        assert!(e.contains("beyond end"), "{e}");
    }

    #[test]
    fn closure_orders_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let rel = dir.path().join("lib/modules/6.1-test");
        std::fs::create_dir_all(rel.join("kernel/fs")).unwrap();
        let vm = "vermagic=6.1-test SMP mod_unload riscv";
        let w = |name: &str, info: &[&str]| {
            let mut all = info.to_vec();
            all.push(vm);
            std::fs::write(rel.join("kernel/fs").join(name), fake_module(&all)).unwrap();
        };
        w(
            "ext4.ko",
            &[
                "depends=jbd2,mbcache,crc16",
                "softdep=pre: crypto-crc32c post: nothing",
            ],
        );
        w("jbd2.ko", &["depends=", "softdep=pre: missing-soft"]);
        w("mbcache.ko", &["depends="]);
        w("crc32c_generic.ko", &["depends="]);
        let zst = zstd::encode_all(&fake_module(&["depends=", vm])[..], 1).unwrap();
        std::fs::write(rel.join("kernel/fs/crc16.ko.zst"), zst).unwrap();
        std::fs::write(
            rel.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_mmio.ko\n",
        )
        .unwrap();
        let t = ModuleTree::open(&rel).unwrap();
        assert!(t.is_builtin("virtio-mmio"));
        let order: Vec<String> = t
            .closure(&["ext4", "virtio_mmio"])
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            order,
            vec!["jbd2", "mbcache", "crc16", "crc32c_generic", "ext4"]
        );
        let e = t.closure(&["nonexistent"]).unwrap_err().to_string();
        assert!(e.contains("neither built in"), "{e}");

        w("wrongver.ko", &["depends=", "vermagic=5.0 SMP"]);
        let t = ModuleTree::open(&rel).unwrap();
        let e = t.closure(&["wrongver"]).unwrap_err().to_string();
        assert!(e.contains("built for kernel"), "{e}");
    }

    #[test]
    fn config_parsing() {
        let c = parse_config(
            "# CONFIG_X is not set\nCONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO=y\nCONFIG_S=\"a b\"\n",
        );
        assert_eq!(c["CONFIG_VIRTIO_BLK"], "m");
        assert_eq!(c["CONFIG_S"], "a b");
        assert!(!c.contains_key("CONFIG_X"));
    }
}
