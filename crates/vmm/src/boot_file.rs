//! [`BootFile`]: a kernel or initrd as both boards load it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A kernel or initrd: bytes in memory, or a file the loader reads
/// straight into guest RAM (no copy in between: a boot's kernel and
/// initrd are tens of MiB, and each page of a copy costs a page fault
/// and its clearing, ~5% of a short riscv64 boot).
#[derive(Debug)]
pub enum BootFile {
    Bytes(Vec<u8>),
    File(File),
}

impl Default for BootFile {
    fn default() -> Self {
        BootFile::Bytes(Vec::new())
    }
}

impl From<Vec<u8>> for BootFile {
    fn from(v: Vec<u8>) -> Self {
        BootFile::Bytes(v)
    }
}

impl BootFile {
    /// Opens `path` for reading (its bytes are read when loaded).
    pub fn open(path: &Path) -> std::io::Result<BootFile> {
        File::open(path).map(BootFile::File)
    }

    /// Its size in bytes.
    pub fn len(&self) -> std::io::Result<u64> {
        match self {
            BootFile::Bytes(b) => Ok(b.len() as u64),
            BootFile::File(f) => Ok(f.metadata()?.len()),
        }
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Bytes `off..off + len`, fewer at the end of the file.
    pub fn read_range(&self, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
        match self {
            BootFile::Bytes(b) => {
                let start = (off.min(b.len() as u64)) as usize;
                let end = start.saturating_add(len).min(b.len());
                Ok(b[start..end].to_vec())
            }
            BootFile::File(f) => {
                // No bigger than what the file holds there: the first
                // 64 KB asked of a small guest would be zeroed (and stay
                // resident) for nothing.
                let size = f.metadata()?.len();
                let len = len.min(size.saturating_sub(off).try_into().unwrap_or(usize::MAX));
                let mut buf = vec![0u8; len];
                let got = read_at_most(f, &mut buf, off)?;
                buf.truncate(got);
                Ok(buf)
            }
        }
    }

    /// All of its bytes.
    pub fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        match self {
            BootFile::Bytes(b) => Ok(b),
            BootFile::File(mut f) => {
                let mut v = Vec::new();
                f.seek(SeekFrom::Start(0))?;
                f.read_to_end(&mut v)?;
                Ok(v)
            }
        }
    }

    /// Fills `dst` with its bytes from offset 0; a file shorter than
    /// `dst` (changed since its size was taken) is an error.
    pub fn read_into(&self, dst: &mut [u8]) -> std::io::Result<()> {
        match self {
            BootFile::Bytes(b) if b.len() == dst.len() => {
                dst.copy_from_slice(b);
                Ok(())
            }
            BootFile::File(f) if read_at_most(f, dst, 0)? == dst.len() => Ok(()),
            _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Copies all of it to guest-physical `addr` of `mem`.
    pub fn copy_to(&self, mem: &GuestMemoryMmap, addr: u64) -> Result<(), String> {
        match self {
            BootFile::Bytes(b) => mem
                .write_slice(b, GuestAddress(addr))
                .map_err(|e| e.to_string()),
            BootFile::File(f) => {
                let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
                let mut r = f;
                r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
                mem.read_exact_volatile_from(GuestAddress(addr), &mut r, len)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Reads into `buf` from `off` until it is full or the file ends;
/// returns the bytes read.
fn read_at_most(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_reads_agree_for_bytes_and_files() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, &data).unwrap();
        let file = BootFile::open(tmp.path()).unwrap();
        let bytes = BootFile::from(data.clone());
        for f in [&file, &bytes] {
            assert_eq!(f.len().unwrap(), 5000);
            assert_eq!(f.read_range(100, 50).unwrap(), data[100..150]);
            assert_eq!(f.read_range(4990, 64).unwrap(), data[4990..]);
            assert!(f.read_range(6000, 10).unwrap().is_empty());
            let mut all = vec![0u8; 5000];
            f.read_into(&mut all).unwrap();
            assert_eq!(all, data);
            // A destination longer than the file: it changed meanwhile.
            assert!(f.read_into(&mut vec![0u8; 5001]).is_err());
        }
        assert_eq!(file.into_bytes().unwrap(), data);
    }
}
