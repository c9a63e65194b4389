//! Helpers shared by the library-level integration tests: temporary
//! folders, a seeded PRNG, and running the real qemu-img.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A temporary folder removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "virtkit-image-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("VIRTKIT_KEEP_TMP").is_some() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: deterministic workloads from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Runs qemu-img; returns (exit code, stdout, stderr).
pub fn qemu_img(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img must be installed (Debian package qemu-utils)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs qemu-img and panics with its output unless it exits 0.
pub fn qemu_img_ok(args: &[&str]) -> String {
    let (code, out, err) = qemu_img(args);
    assert_eq!(code, 0, "qemu-img {args:?} failed: {out}\n{err}");
    out
}

/// `qemu-img check --output=json` of a qcow2 image: panics with the report
/// unless it is clean (no corruptions, leaks or errors).
pub fn assert_qemu_check_clean(path: &Path) {
    let p = path.to_str().unwrap();
    let (code, out, err) = qemu_img(&["check", "--output=json", "-f", "qcow2", p]);
    assert_eq!(code, 0, "qemu-img check {p} exit {code}: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in ["corruptions", "leaks", "check-errors"] {
        assert_eq!(
            v.get(k).and_then(|x| x.as_u64()).unwrap_or(0),
            0,
            "{k} in {out}"
        );
    }
}

/// `qemu-img check --output=json`, parsed.
pub fn qemu_check_json(path: &Path) -> (i32, serde_json::Value) {
    let p = path.to_str().unwrap();
    let (code, out, err) = qemu_img(&["check", "--output=json", "-f", "qcow2", p]);
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|_| panic!("qemu-img check {p}: exit {code}, no JSON: {out}\n{err}"));
    (code, v)
}

pub fn qemu_info(path: &Path) -> serde_json::Value {
    let out = qemu_img_ok(&["info", "--output=json", path.to_str().unwrap()]);
    serde_json::from_str(&out).unwrap()
}

/// `qemu-img compare` of two images (formats probed): true when identical.
pub fn qemu_same(a: &Path, b: &Path) -> bool {
    let (code, out, err) = qemu_img(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(
        code == 0 || code == 1,
        "qemu-img compare failed: {out}\n{err}"
    );
    code == 0
}

/// Reads the whole virtual disk through our library.
pub fn read_all(img: &image::Image) -> Vec<u8> {
    use image::BlockBackend;
    let mut v = vec![0u8; img.len() as usize];
    img.read_at(&mut v, 0).unwrap();
    v
}

/// Asserts equality of two byte slices, naming the first differing offset.
pub fn assert_same_bytes(what: &str, a: &[u8], b: &[u8]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!(
            "{what}: first difference at byte {i:#x}: {:#x} vs {:#x}",
            a[i], b[i]
        );
    }
}
