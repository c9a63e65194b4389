//! `commit`: writes what an overlay holds into its backing file, then (like
//! `qemu-img commit` without `-d`) empties the overlay so that it reads
//! through to the now-updated backing file.

use std::path::Path;

use super::IO_CHUNK;
use crate::{open, BlockBackend, Image, OpenOptions};

/// Errors of `commit`.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Image(#[from] crate::Error),
    #[error("Image does not have a backing file")]
    NoBacking,
    #[error("Could not open '{path}': {source}")]
    Open { path: String, source: crate::Error },
    /// `-b BASE` names a file deeper in the chain than the direct backing
    /// file.
    #[error(
        "'{base}' is not the backing file of '{top}': committing into a deeper backing file \
         is not supported (commit one layer at a time)"
    )]
    NotDirectBase { base: String, top: String },
}

/// Checks that `base` (`commit -b`) is the direct backing file of the image
/// at `path`: only one layer is committed at a time.
pub fn check_base(
    path: &Path,
    format: Option<crate::Format>,
    base: &Path,
) -> Result<(), CommitError> {
    let top = open(
        path,
        &OpenOptions {
            read_only: true,
            format,
            follow_backing: false,
            sharing: crate::Sharing::Tool,
            ..Default::default()
        },
    )
    .map_err(|source| CommitError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let backing = top.backing_filename().ok_or(CommitError::NoBacking)?;
    let direct = crate::resolve_backing_path(path, &backing);
    if std::fs::canonicalize(&direct).ok() != std::fs::canonicalize(base).ok() {
        return Err(CommitError::NotDirectBase {
            base: base.display().to_string(),
            top: path.display().to_string(),
        });
    }
    Ok(())
}

/// What the commit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Bytes of data copied into the backing file.
    pub copied: u64,
    /// Bytes made zero in the backing file.
    pub zeroed: u64,
}

/// Commits the image at `path` (format `format`, probed if `None`) into its
/// backing file. With `keep` (`-d`), the overlay is left as it was.
pub fn commit(
    path: &Path,
    format: Option<crate::Format>,
    keep: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CommitStats, CommitError> {
    // The overlay alone (its own clusters only); read-write to empty it.
    let top = open(
        path,
        &OpenOptions {
            read_only: keep,
            format,
            follow_backing: false,
            sharing: crate::Sharing::Tool,
            ..Default::default()
        },
    )?;
    let backing_name = top.backing_filename().ok_or(CommitError::NoBacking)?;
    let backing_path = crate::resolve_backing_path(path, &backing_name);
    let base = open(
        &backing_path,
        &OpenOptions {
            read_only: false,
            format: top.backing_format(),
            sharing: crate::Sharing::Tool,
            ..Default::default()
        },
    )?;
    let stats = copy_layer(&top, &base, progress)?;
    base.flush()?;
    if !keep {
        top.make_empty()?;
        top.flush()?;
    }
    Ok(stats)
}

/// Copies every range that `top` allocates into `base`, growing `base` if
/// the overlay is larger (qemu-img commit does the same).
fn copy_layer(
    top: &Image,
    base: &Image,
    progress: &mut dyn FnMut(u64, u64),
) -> crate::Result<CommitStats> {
    let size = top.len();
    if base.len() < size {
        base.resize(size, false)?;
    }
    let mut stats = CommitStats::default();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut offset = 0u64;
    progress(0, size);
    while offset < size {
        let st = top.layer_status(offset, size - offset)?;
        let n = st.len.clamp(1, size - offset).min(IO_CHUNK as u64);
        if st.allocated {
            if st.zero {
                base.write_zeroes(offset, n, false)?;
                stats.zeroed += n;
            } else {
                let chunk = &mut buf[..n as usize];
                top.read_at(chunk, offset)?;
                base.write_at(chunk, offset)?;
                stats.copied += n;
            }
        }
        offset += n;
        progress(offset, size);
    }
    Ok(stats)
}
