//! `rebase`: gives an overlay a new backing file. In safe mode (the
//! default) every range the overlay does not allocate and where the old and
//! the new backing chains differ is first copied into the overlay, so the
//! overlay reads the same before and after; `-u` (unsafe) only rewrites the
//! header. An empty new backing name flattens the image.

use std::path::Path;

use super::IO_CHUNK;
use crate::{open, BlockBackend, Format, Image, OpenOptions};

/// Granularity at which differences are copied (qemu compares sectors).
const SECTOR: usize = 512;

/// Errors of `rebase`.
#[derive(Debug, thiserror::Error)]
pub enum RebaseError {
    #[error(transparent)]
    Image(#[from] crate::Error),
    #[error("Could not open new backing file '{name}': {source}")]
    NewBacking {
        name: String,
        #[source]
        source: crate::Error,
    },
}

/// The rebase to perform.
#[derive(Clone, Debug)]
pub struct RebaseOptions<'a> {
    /// Format of the image itself (`-f`; probed if `None`).
    pub format: Option<Format>,
    /// New backing file name as it will be stored (`-b`); `None` or `""`
    /// removes the backing file.
    pub backing: Option<&'a str>,
    /// Its format (`-F`; probed if `None`).
    pub backing_format: Option<Format>,
    /// `-u`: rewrite the header only.
    pub unsafe_mode: bool,
    /// `-U`: open the new backing file sharing everything (it may be in
    /// use by a writer).
    pub force_share: bool,
}

/// Rebases the image at `path`. Returns the bytes copied into the overlay.
pub fn rebase(
    path: &Path,
    opts: &RebaseOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, RebaseError> {
    let new_name = opts.backing.filter(|b| !b.is_empty());
    let mut new_format = opts.backing_format;
    let mut copied = 0;
    if opts.unsafe_mode {
        let top = open(
            path,
            &OpenOptions {
                format: opts.format,
                follow_backing: false,
                sharing: crate::Sharing::Tool,
                ..Default::default()
            },
        )?;
        top.set_backing(new_name, new_format)?;
        top.flush()?;
        return Ok(0);
    }
    // Safe mode: the image with its current chain, and the new chain.
    let top = open(
        path,
        &OpenOptions {
            format: opts.format,
            sharing: crate::Sharing::Tool,
            ..Default::default()
        },
    )?;
    let new_backing = match new_name {
        Some(name) => {
            let bpath = crate::resolve_backing_path(path, name);
            let img = open(
                &bpath,
                &OpenOptions {
                    read_only: true,
                    format: opts.backing_format,
                    sharing: if opts.force_share {
                        crate::Sharing::ForceShare
                    } else {
                        crate::Sharing::Tool
                    },
                    ..Default::default()
                },
            )
            .map_err(|source| RebaseError::NewBacking {
                name: name.to_string(),
                source,
            })?;
            new_format.get_or_insert(img.format());
            Some(img)
        }
        None => None,
    };
    copied += copy_differences(&top, new_backing.as_ref(), progress)?;
    top.flush()?;
    top.set_backing(new_name, new_format)?;
    top.flush()?;
    Ok(copied)
}

/// Reads `buf.len()` bytes of `img` at `offset`, zeros past its end.
fn read_or_zero(img: Option<&Image>, buf: &mut [u8], offset: u64) -> crate::Result<()> {
    buf.fill(0);
    if let Some(img) = img {
        let len = img.len();
        if offset < len {
            let n = ((len - offset) as usize).min(buf.len());
            img.read_at(&mut buf[..n], offset)?;
        }
    }
    Ok(())
}

/// Copies into `top` every sector it does not allocate where its current
/// content (through the old chain) differs from `new_backing`'s.
fn copy_differences(
    top: &Image,
    new_backing: Option<&Image>,
    progress: &mut dyn FnMut(u64, u64),
) -> crate::Result<u64> {
    let size = top.len();
    let mut old_buf = vec![0u8; IO_CHUNK];
    let mut new_buf = vec![0u8; IO_CHUNK];
    let mut copied = 0u64;
    let mut offset = 0u64;
    progress(0, size);
    while offset < size {
        let st = top.layer_status(offset, size - offset)?;
        let n = st.len.clamp(1, size - offset).min(IO_CHUNK as u64);
        if !st.allocated {
            let old = &mut old_buf[..n as usize];
            let new = &mut new_buf[..n as usize];
            top.read_at(old, offset)?;
            read_or_zero(new_backing, new, offset)?;
            // Write each run of differing sectors.
            let mut pos = 0usize;
            while pos < old.len() {
                let end = (pos + SECTOR).min(old.len());
                if old[pos..end] == new[pos..end] {
                    pos = end;
                    continue;
                }
                let start = pos;
                while pos < old.len() {
                    let e = (pos + SECTOR).min(old.len());
                    if old[pos..e] == new[pos..e] {
                        break;
                    }
                    pos = e;
                }
                top.write_at(&old[start..pos], offset + start as u64)?;
                copied += (pos - start) as u64;
            }
        }
        offset += n;
        progress(offset, size);
    }
    Ok(copied)
}
