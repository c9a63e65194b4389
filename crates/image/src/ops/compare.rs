//! `compare`: do two images read the same? Follows `qemu-img compare`:
//! the first difference is reported at 512-byte granularity, an image that
//! is larger than the other must read as zeros past the other's end (unless
//! strict mode, where sizes must match), and strict mode also requires the
//! same allocation status everywhere.

use super::{reads_as_zero, Status, StatusSource, IO_CHUNK};
use crate::BlockBackend;

/// Granularity of reported mismatch offsets (qemu compares sectors).
pub const SECTOR: u64 = 512;

/// The verdict, which the command line turns into qemu-img's messages and
/// exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// "Images are identical." (after "Warning: Image size mismatch!" when
    /// `size_mismatch`).
    Identical { size_mismatch: bool },
    /// "Content mismatch at offset N!".
    Mismatch { offset: u64, size_mismatch: bool },
    /// "Strict mode: Image size mismatch!".
    StrictSizeMismatch,
    /// "Strict mode: Offset N block status mismatch!".
    StrictStatusMismatch { offset: u64 },
}

impl Outcome {
    /// qemu-img's exit code: 0 identical, 1 different.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Identical { .. } => 0,
            _ => 1,
        }
    }

    /// The lines qemu-img prints for this verdict.
    pub fn message(&self) -> String {
        let warn = "Warning: Image size mismatch!\n";
        match self {
            Outcome::Identical { size_mismatch } => {
                format!(
                    "{}Images are identical.",
                    if *size_mismatch { warn } else { "" }
                )
            }
            Outcome::Mismatch {
                offset,
                size_mismatch,
            } => format!(
                "{}Content mismatch at offset {offset}!",
                if *size_mismatch { warn } else { "" }
            ),
            Outcome::StrictSizeMismatch => "Strict mode: Image size mismatch!".to_string(),
            Outcome::StrictStatusMismatch { offset } => {
                format!("Strict mode: Offset {offset} block status mismatch!")
            }
        }
    }
}

/// One image to compare: its content and its block status.
pub struct Side<'a> {
    pub backend: &'a dyn BlockBackend,
    pub status: &'a dyn StatusSource,
}

/// Offset of the first differing sector of two equal-length buffers, if any.
fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    // Compare in large slices first (memcmp speed), then find the byte.
    const STRIDE: usize = 4096;
    for (i, (ca, cb)) in a.chunks(STRIDE).zip(b.chunks(STRIDE)).enumerate() {
        if ca != cb {
            let byte = ca.iter().zip(cb).position(|(x, y)| x != y).unwrap_or(0);
            let pos = (i * STRIDE + byte) as u64;
            return Some(pos / SECTOR * SECTOR);
        }
    }
    None
}

/// Offset of the first sector holding a nonzero byte, if any.
fn first_nonzero(buf: &[u8]) -> Option<u64> {
    buf.iter()
        .position(|&b| b != 0)
        .map(|p| p as u64 / SECTOR * SECTOR)
}

/// Checks that `len` bytes of `side` at `offset` read as zeros; returns the
/// first nonzero sector's offset otherwise.
fn check_zero(side: &Side, offset: u64, len: u64, buf: &mut [u8]) -> crate::Result<Option<u64>> {
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let st = side.status.status(pos, end - pos)?;
        let n = st.len.clamp(1, end - pos);
        if !reads_as_zero(&st) {
            let mut done = 0;
            while done < n {
                let k = (n - done).min(buf.len() as u64) as usize;
                side.backend.read_at(&mut buf[..k], pos + done)?;
                if let Some(at) = first_nonzero(&buf[..k]) {
                    return Ok(Some(pos + done + at));
                }
                done += k as u64;
            }
        }
        pos += n;
    }
    Ok(None)
}

fn status_key(s: &Status) -> (bool, bool, bool) {
    (s.present, s.zero, s.data)
}

/// Compares two images as `qemu-img compare [-s]` does. `progress` is
/// called with (bytes compared, bytes to compare) as the comparison goes.
pub fn compare(
    a: &Side,
    b: &Side,
    strict: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> crate::Result<Outcome> {
    let (size_a, size_b) = (a.backend.len(), b.backend.len());
    if strict && size_a != size_b {
        return Ok(Outcome::StrictSizeMismatch);
    }
    let common = size_a.min(size_b);
    let mut buf_a = vec![0u8; IO_CHUNK];
    let mut buf_b = vec![0u8; IO_CHUNK];
    let mut offset = 0;
    let total = size_a.max(size_b);
    while offset < common {
        progress(offset, total);
        let left = common - offset;
        let sa = a.status.status(offset, left)?;
        let sb = b.status.status(offset, left)?;
        let chunk = sa.len.min(sb.len).clamp(1, left);
        if strict && status_key(&sa) != status_key(&sb) {
            return Ok(Outcome::StrictStatusMismatch { offset });
        }
        // Unallocated over a whole chain reads as zeros, like a zero extent.
        let zero_a = reads_as_zero(&sa);
        let zero_b = reads_as_zero(&sb);
        let mismatch = match (zero_a, zero_b) {
            (true, true) => None,
            (false, false) => {
                let mut done = 0;
                let mut found = None;
                while done < chunk {
                    let k = (chunk - done).min(IO_CHUNK as u64) as usize;
                    a.backend.read_at(&mut buf_a[..k], offset + done)?;
                    b.backend.read_at(&mut buf_b[..k], offset + done)?;
                    if let Some(at) = first_difference(&buf_a[..k], &buf_b[..k]) {
                        found = Some(offset + done + at);
                        break;
                    }
                    done += k as u64;
                }
                found
            }
            (true, false) => check_zero(b, offset, chunk, &mut buf_b)?,
            (false, true) => check_zero(a, offset, chunk, &mut buf_a)?,
        };
        if let Some(offset) = mismatch {
            return Ok(Outcome::Mismatch {
                offset,
                size_mismatch: false,
            });
        }
        offset += chunk;
    }
    progress(common, total);
    if size_a == size_b {
        return Ok(Outcome::Identical {
            size_mismatch: false,
        });
    }
    // The larger image must read as zeros past the smaller one's end.
    let larger = if size_a > size_b { a } else { b };
    let extra = larger.backend.len() - common;
    match check_zero(larger, common, extra, &mut buf_a)? {
        Some(offset) => Ok(Outcome::Mismatch {
            offset,
            size_mismatch: true,
        }),
        None => Ok(Outcome::Identical {
            size_mismatch: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difference_is_sector_aligned() {
        let a = vec![0u8; 8192];
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b), None);
        b[1000] = 1;
        assert_eq!(first_difference(&a, &b), Some(512));
        b[5000] = 1;
        assert_eq!(first_difference(&a, &b), Some(512));
        assert_eq!(first_nonzero(&b), Some(512));
    }

    #[test]
    fn messages() {
        assert_eq!(
            Outcome::Mismatch {
                offset: 524288,
                size_mismatch: false
            }
            .message(),
            "Content mismatch at offset 524288!"
        );
        assert_eq!(
            Outcome::Identical {
                size_mismatch: true
            }
            .message(),
            "Warning: Image size mismatch!\nImages are identical."
        );
        assert_eq!(Outcome::StrictSizeMismatch.exit_code(), 1);
    }
}
