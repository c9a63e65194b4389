//! Guest assets for virtkit: Debian packages fetched and verified as apt
//! does, and the initramfs of the default riscv64 and amd64 guests.
//!
//! # Quick use
//!
//! - [`busybox`]`(Arch::Riscv64)`: path of Debian's static busybox for that
//!   architecture (suite [`DEFAULT_SUITE`]), cached.
//! - [`default_riscv64`]: Debian's riscv64 kernel and an initramfs built
//!   for it ([`GuestAssets`]).
//! - [`run_initramfs`]: the base initramfs plus a small archive carrying
//!   the command to run; hand the bytes to the VM as its initrd.
//!
//! # Where packages come from
//!
//! The Debian archive named in the host's apt configuration
//! ([`sources::host_mirror`]; `VIRTKIT_DEBIAN_MIRROR` overrides it).
//! `dists/<suite>/InRelease` is checked with `gpgv` against the Debian
//! archive keyring, `Packages.xz` against the SHA256 the signed Release
//! lists, and each .deb against the SHA256 in Packages. Everything lives in
//! the cache ([`fetch`] describes its layout).
//!
//! # The guest's protocol
//!
//! The initramfs's `/init` mounts proc, sys and devtmpfs, loads the virtio
//! and ext4 modules, mounts `/dev/vda` (ext4) at `/mnt` when a virtio disk
//! exists, then runs the command found in `/virtkit/cmd` (one line of shell
//! that exports the environment and sets `"$@"`: [`initramfs::command_script`])
//! with the console as its terminal, or an interactive shell without one.
//! With `virtkit.wait=1` on the kernel command line it reads that line from
//! the console instead, after printing [`READY_MARKER`]
//! ([`command_line`]): how `virtkit run` snapshots a booted guest. Then it
//! syncs, unmounts, and reports the exit status by writing to the
//! "sifive,test" finisher of QEMU's `virt` board at physical `0x100000`
//! (32 bits): `0x5555` when the status is 0, `(status << 16) | 0x3333`
//! otherwise; QEMU then exits with that status. Should that write not power
//! the machine off, the init runs `poweroff -f`. Boards without that
//! finisher (virtkit's x86-64 KVM board) put [`EXIT_SERIAL_ARG`] on the
//! kernel command line: the init then prints [`EXIT_MARKER`], the decimal
//! status and a newline on the console, for the host to strip and parse,
//! and runs `reboot -f` (with `reboot=k`, a reset through the i8042).

// Parsing untrusted archives needs no unsafe code; keep it that way.
#![forbid(unsafe_code)]

pub mod cpio;
pub mod deb;
mod error;
pub mod fetch;
pub mod index;
pub mod initramfs;
pub mod modules;
pub mod sources;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

pub use error::{Error, Result};
pub use fetch::{Fetcher, Progress, ProgressFn};
pub use initramfs::{command_line, run_archive, GO_MARKER, INIT_SCRIPT, READY_MARKER, WAIT_ARG};

use error::IoContext;

/// Kernel command-line word asking the init to report the exit status on
/// the console (see the crate documentation) instead of the finisher.
pub const EXIT_SERIAL_ARG: &str = "virtkit.exit=serial";

/// What precedes the exit status on the console with [`EXIT_SERIAL_ARG`]:
/// an ASCII record separator, so no ordinary output line looks like it.
pub const EXIT_MARKER: &[u8] = b"\x1evirtkit-exit ";

/// Debian release the guest packages come from: Debian 13.
pub const DEFAULT_SUITE: &str = "trixie";

/// Drivers the default guest needs, by kernel config option and module
/// name; `true` means the guest cannot work without it. Debian's modules
/// carry their symbols (ext4.ko is 7 MB), so vsock, which the VM does not
/// offer yet, stays out to keep the initramfs and boot small. virtio_net
/// brings its dependencies (failover, net_failover) through the closure.
const GUEST_DRIVERS: &[(&str, &str, bool)] = &[
    ("CONFIG_VIRTIO_MMIO", "virtio_mmio", true),
    ("CONFIG_VIRTIO_BLK", "virtio_blk", true),
    ("CONFIG_EXT4_FS", "ext4", true),
    ("CONFIG_VIRTIO_CONSOLE", "virtio_console", false),
    ("CONFIG_HW_RANDOM_VIRTIO", "virtio_rng", false),
    ("CONFIG_VIRTIO_NET", "virtio_net", false),
];

/// Bump when the initramfs layout changes in a way the inputs' hashes do
/// not capture, so cached builds are redone.
const BUILD_FORMAT: &str = "virtkit-guest-2";

/// A Debian architecture the guest crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    Riscv64,
    Amd64,
}

impl Arch {
    /// The Debian architecture name.
    pub fn debian_name(self) -> &'static str {
        match self {
            Arch::Riscv64 => "riscv64",
            Arch::Amd64 => "amd64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian_name())
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "riscv64" => Ok(Arch::Riscv64),
            "amd64" | "x86_64" | "x86-64" => Ok(Arch::Amd64),
            _ => Err(Error::Invalid(format!(
                "unknown architecture {s:?} (known: riscv64, amd64)"
            ))),
        }
    }
}

/// Path of Debian's static busybox for `arch` from [`DEFAULT_SUITE`],
/// fetched into the cache if needed (a few seconds once, then instant).
pub fn busybox(arch: Arch) -> Result<PathBuf> {
    busybox_with(&Fetcher::new(DEFAULT_SUITE)?, arch)
}

/// [`busybox`] with an explicit fetcher (suite, mirror, cache directory).
pub fn busybox_with(fetcher: &Fetcher, arch: Arch) -> Result<PathBuf> {
    let mut s = fetcher.lock()?;
    let (pkg, tree) = s.fetch(arch.debian_name(), "busybox-static")?;
    find_busybox(&tree, &pkg.name)
}

fn find_busybox(tree: &Path, pkg: &str) -> Result<PathBuf> {
    ["usr/bin/busybox", "bin/busybox"]
        .iter()
        .map(|p| tree.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::format(pkg, "package has no bin/busybox"))
}

/// The default guest: Debian's kernel and an initramfs built for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAssets {
    /// The kernel: on riscv64 Debian's `/boot/vmlinux-*` (a RISC-V `Image`
    /// with an EFI header, bootable directly at the start of RAM + 2 MiB),
    /// on amd64 its `/boot/vmlinuz-*` (a bzImage). Cached as `Image`.
    pub kernel: PathBuf,
    /// The base initramfs (uncompressed newc cpio); append a run archive
    /// with [`run_initramfs`].
    pub initramfs: PathBuf,
    /// The kernel's configuration file.
    pub config: PathBuf,
    /// `uname -r` of the kernel.
    pub kernel_release: String,
    /// Modules loaded by the init, in load order.
    pub modules: Vec<String>,
    /// Debian versions used: (package, version).
    pub packages: Vec<(String, String)>,
}

/// [`GuestAssets`] of the default riscv64 guest from [`DEFAULT_SUITE`],
/// fetched and built on first use, cached afterwards.
pub fn default_riscv64() -> Result<GuestAssets> {
    guest_assets(&Fetcher::new(DEFAULT_SUITE)?, Arch::Riscv64)
}

/// The base initramfs at `base` followed by the archive that makes the
/// guest run `argv` (see the crate documentation for the protocol). With an
/// empty `argv` the guest starts an interactive shell.
pub fn run_initramfs(base: &Path, argv: &[String]) -> Result<Vec<u8>> {
    initramfs::run_initramfs(base, argv, &[])
}

/// [`run_initramfs`] with extra environment variables for the command.
pub fn run_initramfs_with_env(
    base: &Path,
    argv: &[String],
    env: &[(String, String)],
) -> Result<Vec<u8>> {
    initramfs::run_initramfs(base, argv, env)
}

/// The unpacked kernel package of `arch` (what `linux-image-<arch>`
/// depends on) under a held fetch session.
fn kernel_package(s: &mut fetch::Session<'_>, arch: Arch) -> Result<(index::Package, PathBuf)> {
    let a = arch.debian_name();
    let meta_name = format!("linux-image-{a}");
    let meta = s.package(a, &meta_name)?;
    let real = meta
        .depends_names()
        .into_iter()
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| {
            Error::format(
                &meta_name,
                format!("no linux-image dependency in {:?}", meta.depends),
            )
        })?;
    s.fetch(a, &real)
}

/// The modules directory (`lib/modules/<release>`) of an unpacked kernel
/// package.
fn module_dir(ktree: &Path, pkg: &str, release: &str) -> Result<PathBuf> {
    ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|d| ktree.join(d).join(release))
        .find(|d| d.is_dir())
        .ok_or_else(|| Error::format(pkg, format!("package has no lib/modules/{release}")))
}

/// The kernel image in `/boot` of an unpacked kernel package and its
/// release (`vmlinux-*` on riscv64, the `vmlinuz-*` bzImage on amd64).
fn boot_kernel(ktree: &Path, pkg: &str) -> Result<(PathBuf, String)> {
    let boot = ktree.join("boot");
    for e in fs::read_dir(&boot).ctx(|| format!("reading {}", boot.display()))? {
        let e = e.ctx(|| format!("reading {}", boot.display()))?;
        let n = e.file_name().to_string_lossy().to_string();
        for prefix in ["vmlinux-", "vmlinuz-"] {
            if let Some(r) = n.strip_prefix(prefix) {
                return Ok((e.path(), r.to_string()));
            }
        }
    }
    Err(Error::format(
        pkg,
        "package has no /boot/vmlinux-* or /boot/vmlinuz-*",
    ))
}

/// Modules `names` of the default kernel of `arch` with their
/// dependencies, in load order, and the kernel's release: for initramfs
/// images built elsewhere (the nested-KVM test loads `kvm_amd` this way).
pub fn kernel_modules(
    fetcher: &Fetcher,
    arch: Arch,
    names: &[&str],
) -> Result<(String, Vec<modules::Module>)> {
    let mut s = fetcher.lock()?;
    let (kpkg, ktree) = kernel_package(&mut s, arch)?;
    let (_, release) = boot_kernel(&ktree, &kpkg.name)?;
    let tree = modules::ModuleTree::open(&module_dir(&ktree, &kpkg.name, &release)?)?;
    for n in names {
        if !tree.has_module(n) && !tree.is_builtin(n) {
            return Err(Error::Invalid(format!(
                "kernel {release} has no module {n}"
            )));
        }
    }
    Ok((release, tree.closure(names)?))
}

/// Fetches the kernel and busybox of `arch` with `fetcher` and builds the
/// guest's initramfs: riscv64 (kernel `Image`) and amd64 (a bzImage).
pub fn guest_assets(fetcher: &Fetcher, arch: Arch) -> Result<GuestAssets> {
    let a = arch.debian_name();
    let mut s = fetcher.lock()?;
    let (kpkg, ktree) = kernel_package(&mut s, arch)?;
    let (bpkg, btree) = s.fetch(a, "busybox-static")?;

    let mut h = Sha256::new();
    for part in [BUILD_FORMAT, &kpkg.sha256, &bpkg.sha256, INIT_SCRIPT] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for (opt, name, _) in GUEST_DRIVERS {
        h.update(format!("{opt}={name}\0").as_bytes());
    }
    let key = fetch::hex(&h.finalize()[..8]);
    let guest_root = fetcher.cache_dir().join("guest");
    let out = guest_root.join(format!("{}-{a}-{key}", fetcher.suite()));
    let packages = vec![
        (kpkg.name.clone(), kpkg.version.clone()),
        (bpkg.name.clone(), bpkg.version.clone()),
    ];
    if let Ok(manifest) = fs::read_to_string(out.join("manifest")) {
        return assets_from(&out, &manifest, packages);
    }

    // The kernel and its config in /boot.
    let (kernel, release) = boot_kernel(&ktree, &kpkg.name)?;
    let boot = ktree.join("boot");
    let config_path = boot.join(format!("config-{release}"));
    let config = modules::parse_config(
        &fs::read_to_string(&config_path).ctx(|| format!("reading {}", config_path.display()))?,
    );
    let moddir = module_dir(&ktree, &kpkg.name, &release)?;
    let tree = modules::ModuleTree::open(&moddir)?;
    let mut wanted = Vec::new();
    for (opt, name, required) in GUEST_DRIVERS {
        match config.get(*opt).map(String::as_str) {
            Some("m") => wanted.push(*name),
            Some("y") => {}
            _ if *required => {
                return Err(Error::Invalid(format!(
                    "kernel {release} lacks {opt} (needed for the {name} driver)"
                )))
            }
            _ => {}
        }
    }
    let mods = tree.closure(&wanted)?;
    let bb_path = find_busybox(&btree, &bpkg.name)?;
    let bb = fs::read(&bb_path).ctx(|| format!("reading {}", bb_path.display()))?;
    let cpio = initramfs::build_base(&bb, &release, &mods)?;

    // Assemble in a temporary directory and rename it into place whole.
    fs::create_dir_all(&guest_root).ctx(|| format!("creating {}", guest_root.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&guest_root)
        .ctx(|| format!("creating a temporary directory in {}", guest_root.display()))?;
    let t = tmp.path();
    if fs::hard_link(&kernel, t.join("Image")).is_err() {
        fs::copy(&kernel, t.join("Image")).ctx(|| format!("copying {}", kernel.display()))?;
    }
    fs::copy(&config_path, t.join("config"))
        .ctx(|| format!("copying {}", config_path.display()))?;
    fs::write(t.join("initramfs.cpio"), &cpio).ctx(|| format!("writing {}", t.display()))?;
    let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
    let manifest = format!("release {release}\nmodules {}\n", names.join(" "));
    fs::write(t.join("manifest"), &manifest).ctx(|| format!("writing {}", t.display()))?;
    fs::rename(t, &out).ctx(|| format!("renaming into {}", out.display()))?;
    let _ = tmp.keep();
    // Builds from older inputs are garbage now (a VM still running from one
    // keeps its open files).
    let prefix = format!("{}-{a}-", fetcher.suite());
    if let Ok(rd) = fs::read_dir(&guest_root) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) && e.path() != out {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    assets_from(&out, &manifest, packages)
}

/// The guest built earlier into `dir` (a directory [`guest_assets`]
/// made: `Image`, `initramfs.cpio`, `config`, `manifest`), used as is:
/// no Debian archive, no apt configuration (offline machines; the nested
/// KVM test copies one into its outer guest). `packages` stays empty.
pub fn prebuilt_assets(dir: &Path) -> Result<GuestAssets> {
    let path = dir.join("manifest");
    let manifest = fs::read_to_string(&path).ctx(|| {
        format!(
            "reading {} (is {} a guest directory built by virtkit?)",
            path.display(),
            dir.display()
        )
    })?;
    assets_from(dir, &manifest, Vec::new())
}

fn assets_from(dir: &Path, manifest: &str, packages: Vec<(String, String)>) -> Result<GuestAssets> {
    let field = |name: &str| {
        manifest
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .map(str::to_string)
            .ok_or_else(|| {
                Error::format(
                    dir.join("manifest").display().to_string(),
                    format!("no {name} line"),
                )
            })
    };
    Ok(GuestAssets {
        kernel: dir.join("Image"),
        initramfs: dir.join("initramfs.cpio"),
        config: dir.join("config"),
        kernel_release: field("release")?,
        modules: field("modules")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        packages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!("riscv64".parse::<Arch>().unwrap(), Arch::Riscv64);
        assert_eq!("x86_64".parse::<Arch>().unwrap(), Arch::Amd64);
        assert_eq!(Arch::Amd64.to_string(), "amd64");
        let e = "arm".parse::<Arch>().unwrap_err().to_string();
        assert!(e.contains("unknown architecture"), "{e}");
    }

    #[test]
    fn prebuilt_assets_read_the_manifest() {
        let d = tempfile::tempdir().unwrap();
        let e = prebuilt_assets(d.path()).unwrap_err().to_string();
        assert!(e.contains("guest directory built by virtkit"), "{e}");
        fs::write(d.path().join("manifest"), "release 6.1\nmodules a b\n").unwrap();
        let a = prebuilt_assets(d.path()).unwrap();
        assert_eq!(a.kernel, d.path().join("Image"));
        assert_eq!(a.kernel_release, "6.1");
        assert_eq!(a.modules, ["a", "b"]);
    }

    #[test]
    fn init_reports_status_on_the_console_when_asked() {
        // The host side (virtkit run --arch x86_64) parses exactly this.
        assert!(INIT_SCRIPT.contains(EXIT_SERIAL_ARG));
        let marker = std::str::from_utf8(EXIT_MARKER)
            .unwrap()
            .replace('\x1e', "\\036");
        assert!(
            INIT_SCRIPT.contains(&format!("printf '{marker}%d\\n'")),
            "{marker}"
        );
    }
}
