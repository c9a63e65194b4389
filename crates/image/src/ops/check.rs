//! `check`: check an image's metadata, repair what the caller allows, and
//! when something was repaired check the repaired image again, as
//! `qemu-img check -r` does.

use std::path::Path;

use crate::{CheckReport, Format, OpenOptions, Repair, Sharing};

/// What a check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckRun {
    /// The first pass, with the repairs it made.
    pub first: CheckReport,
    /// When the first pass repaired something: the check of the repaired
    /// image, carrying the first pass's `leaks_fixed`/`corruptions_fixed`.
    pub recheck: Option<CheckReport>,
}

impl CheckRun {
    /// The state of the image at the end: the re-check if there was one.
    pub fn result(&self) -> &CheckReport {
        self.recheck.as_ref().unwrap_or(&self.first)
    }
}

/// Errors of `check`.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("Could not open '{path}': {source}")]
    Open { path: String, source: crate::Error },
    /// Raw images have no metadata to check.
    #[error("This image format does not support checks")]
    Unsupported,
    #[error("Check failed: {0}")]
    Check(crate::Error),
}

fn open(
    path: &Path,
    format: Option<Format>,
    sharing: Sharing,
    read_only: bool,
) -> Result<crate::Image, CheckError> {
    crate::open(
        path,
        &OpenOptions {
            read_only,
            format,
            follow_backing: false,
            for_check: true,
            sharing,
            ..Default::default()
        },
    )
    .map_err(|source| CheckError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Checks the image at `path` (read-only unless `repair` allows changes),
/// and re-checks it after a repair.
pub fn check(
    path: &Path,
    format: Option<Format>,
    sharing: Sharing,
    repair: Repair,
) -> Result<CheckRun, CheckError> {
    let img = open(path, format, sharing, repair == Repair::None)?;
    if img.format() == Format::Raw {
        return Err(CheckError::Unsupported);
    }
    let first = img.check(repair).map_err(CheckError::Check)?;
    if first.leaks_fixed == 0 && first.corruptions_fixed == 0 {
        return Ok(CheckRun {
            first,
            recheck: None,
        });
    }
    // Report the state after the repair, seen through a fresh open.
    drop(img);
    let again = open(path, format, sharing, true)?;
    let mut recheck = again.check(Repair::None).map_err(CheckError::Check)?;
    recheck.leaks_fixed = first.leaks_fixed;
    recheck.corruptions_fixed = first.corruptions_fixed;
    Ok(CheckRun {
        first,
        recheck: Some(recheck),
    })
}
