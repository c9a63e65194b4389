//! A writer for the cpio "newc" format (the one the Linux kernel unpacks as
//! an initramfs, `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Every header is "070701" plus 13 eight-digit hex fields; the name (with
//! its NUL) and the data are each padded to a multiple of 4 bytes. Times
//! are 0 and inode numbers sequential, so the output is reproducible.

use crate::error::{Error, Result};

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Builds a newc archive in memory.
#[derive(Debug, Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    next_ino: u32,
    finished: bool,
}

impl CpioWriter {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            next_ino: 1,
            finished: false,
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<()> {
        if self.finished {
            return Err(Error::Invalid("cpio: entry added after the trailer".into()));
        }
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name.split('/').any(|c| c == "..") {
            return Err(Error::Invalid(format!("cpio: bad member name {name:?}")));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| Error::Invalid(format!("cpio: {name} is larger than 4 GiB")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.raw_header(name, ino, mode, nlink, size, rdev);
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn raw_header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) {
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }

    /// A directory (parents must be added first).
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<()> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.raw_header("TRAILER!!!", 0, 0, 1, 0, (0, 0));
        self.finished = true;
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new();
        w.dir("bin", 0o755).unwrap();
        w.file("/bin/hello", 0o755, b"#!/bin/sh\necho hi\n")
            .unwrap();
        w.file("bin/odd", 0o644, b"abc").unwrap();
        w.file("bin/empty", 0o600, b"").unwrap();
        w.symlink("bin/sh", "hello").unwrap();
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.finish()
    }

    #[test]
    fn gnu_cpio_reads_it_back() {
        let a = sample();
        assert_eq!(a.len() % 4, 0);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.cpio");
        std::fs::write(&f, &a).unwrap();
        let out = Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&f)
            .output()
            .expect("GNU cpio is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 7, "{listing}");
        assert!(
            lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" bin"),
            "{listing}"
        );
        assert!(
            lines[4].starts_with("lrwxrwxrwx") && lines[4].ends_with("bin/sh -> hello"),
            "{listing}"
        );
        assert!(
            lines[6].starts_with("crw-------") && lines[6].contains("5,"),
            "{listing}"
        );

        // Extract the regular files and compare contents.
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let out = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&f)
            .arg("bin/*")
            .current_dir(&x)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(x.join("bin/hello")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(std::fs::read(x.join("bin/odd")).unwrap(), b"abc");
        assert_eq!(std::fs::read(x.join("bin/empty")).unwrap(), b"");
        assert_eq!(
            std::fs::read_link(x.join("bin/sh")).unwrap().to_str(),
            Some("hello")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(x.join("bin/hello"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn concatenated_archives_read_back() {
        // The kernel (and GNU cpio, archive by archive) accept concatenation;
        // every archive ends 4-aligned, so the next header is aligned too.
        let mut both = sample();
        let mut w = CpioWriter::new();
        w.file("virtkit/argv", 0o644, b"a\0b c\0").unwrap();
        both.extend(w.finish());
        assert_eq!(both.len() % 4, 0);
    }

    #[test]
    fn bad_names_rejected() {
        let mut w = CpioWriter::new();
        assert!(w.file("../etc/passwd", 0o644, b"").is_err());
        assert!(w.file("", 0o644, b"").is_err());
        assert!(w.file("a\0b", 0o644, b"").is_err());
    }
}
