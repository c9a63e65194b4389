//! `create`: what qemu-img checks before creating an image with a backing
//! file (the format supports one, its format is known, it opens) and where
//! the size comes from when none is given; also the backing checks of
//! `convert -B`.

use std::path::Path;

use crate::{CreateOptions, Format, OpenOptions, Sharing};

/// Errors of the checks before `create` and `convert -B`.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("Backing file not supported for file format '{0}'")]
    BackingNotSupported(Format),
    /// qemu-img 7 refuses a backing file without `-F` at create.
    #[error("Backing file specified without backing format")]
    NoBackingFormat { backing: String },
    #[error("Could not open '{path}': {source}\nCould not open backing image.")]
    BackingOpen { path: String, source: crate::Error },
    #[error("Could not open backing file '{backing}': {source}")]
    BackingProbe {
        backing: String,
        source: crate::Error,
    },
    #[error("Image creation needs a size parameter")]
    NoSize,
}

fn check_backing_format_supported(o: &CreateOptions) -> Result<(), CreateError> {
    if o.backing_file.is_some() && o.format != Format::Qcow2 {
        return Err(CreateError::BackingNotSupported(o.format));
    }
    Ok(())
}

/// Checks `o` for a new image at `filename` as `qemu-img create` does and
/// returns its size. With a backing file and `open_backing` (no `-u`), the
/// backing file must open with its given format (relative names are
/// relative to the new image's folder), and its size is the default size.
pub fn prepare(
    filename: &Path,
    o: &mut CreateOptions,
    open_backing: bool,
) -> Result<u64, CreateError> {
    check_backing_format_supported(o)?;
    if let Some(backing) = o.backing_file.clone() {
        if o.backing_format.is_none() {
            return Err(CreateError::NoBackingFormat { backing });
        }
        if open_backing {
            let bpath = crate::resolve_backing_path(filename, &backing);
            let b = crate::open(
                &bpath,
                &OpenOptions {
                    read_only: true,
                    format: o.backing_format,
                    sharing: Sharing::Tool,
                    ..Default::default()
                },
            )
            .map_err(|source| CreateError::BackingOpen {
                path: bpath.display().to_string(),
                source,
            })?;
            o.size.get_or_insert(crate::BlockBackend::len(&b));
        }
    }
    o.size.ok_or(CreateError::NoSize)
}

/// Checks the backing options of `convert -B` for the target `output`: the
/// format must support a backing file, and a missing backing format is
/// probed from the file (qemu-img 7 insists on knowing it).
pub fn prepare_convert_backing(output: &Path, o: &mut CreateOptions) -> Result<(), CreateError> {
    check_backing_format_supported(o)?;
    if let (Some(backing), None) = (o.backing_file.clone(), o.backing_format) {
        let bpath = crate::resolve_backing_path(output, &backing);
        let probed =
            crate::probe(&bpath).map_err(|source| CreateError::BackingProbe { backing, source })?;
        o.backing_format = Some(probed);
    }
    Ok(())
}
