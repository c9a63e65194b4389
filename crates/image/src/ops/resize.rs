//! `resize`: the new size from an absolute or relative request, the shrink
//! rule, and the resize itself (`qemu-img resize [--shrink] FILE [+|-]SIZE`).

use super::size::parse_size;
use crate::{BlockBackend, Image};

/// A requested size: absolute, or relative to the current size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeChange {
    To(u64),
    Grow(u64),
    Shrink(u64),
}

/// Errors of `resize`.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error(
        "Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, \
         megabytes, gigabytes, terabytes, petabytes and exabytes."
    )]
    InvalidSize,
    #[error("Image size too large")]
    TooLarge,
    #[error("New image size must be positive.")]
    NotPositive,
    /// Shrinking loses the data past the new end: it needs `--shrink`.
    #[error("Use the --shrink option to perform a shrink operation.")]
    ShrinkNotAllowed,
    #[error(transparent)]
    Image(#[from] crate::Error),
}

impl SizeChange {
    /// Parses `SIZE`, `+SIZE` or `-SIZE` (qemu's size suffixes).
    pub fn parse(text: &str) -> Result<SizeChange, ResizeError> {
        let (make, rest): (fn(u64) -> SizeChange, &str) = match text.as_bytes().first() {
            Some(b'+') => (SizeChange::Grow, &text[1..]),
            Some(b'-') => (SizeChange::Shrink, &text[1..]),
            _ => (SizeChange::To, text),
        };
        parse_size(rest).map(make).ok_or(ResizeError::InvalidSize)
    }

    /// The new size for an image of `current` bytes, refusing a shrink
    /// unless `allow_shrink`.
    pub fn new_size(self, current: u64, allow_shrink: bool) -> Result<u64, ResizeError> {
        let new_size = match self {
            SizeChange::To(n) => n,
            SizeChange::Grow(n) => current.checked_add(n).ok_or(ResizeError::TooLarge)?,
            SizeChange::Shrink(n) => current.checked_sub(n).ok_or(ResizeError::NotPositive)?,
        };
        if new_size < current && !allow_shrink {
            return Err(ResizeError::ShrinkNotAllowed);
        }
        Ok(new_size)
    }
}

/// Resizes `img` as `change` asks and flushes it; returns the new size.
pub fn resize(img: &Image, change: SizeChange, allow_shrink: bool) -> Result<u64, ResizeError> {
    let new_size = change.new_size(img.len(), allow_shrink)?;
    img.resize(new_size, allow_shrink)?;
    img.flush()?;
    Ok(new_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_absolute_and_relative() {
        assert_eq!(SizeChange::parse("64M").unwrap(), SizeChange::To(64 << 20));
        assert_eq!(SizeChange::parse("+1G").unwrap(), SizeChange::Grow(1 << 30));
        assert_eq!(SizeChange::parse("-512").unwrap(), SizeChange::Shrink(512));
        assert!(matches!(
            SizeChange::parse("+x"),
            Err(ResizeError::InvalidSize)
        ));
    }

    #[test]
    fn shrink_rule_and_arithmetic() {
        let mb = 1 << 20;
        assert_eq!(SizeChange::Grow(mb).new_size(mb, false).unwrap(), 2 * mb);
        assert_eq!(SizeChange::To(mb).new_size(mb, false).unwrap(), mb);
        assert!(matches!(
            SizeChange::To(mb / 2).new_size(mb, false),
            Err(ResizeError::ShrinkNotAllowed)
        ));
        assert!(matches!(
            SizeChange::Shrink(mb / 2).new_size(mb, false),
            Err(ResizeError::ShrinkNotAllowed)
        ));
        assert_eq!(
            SizeChange::Shrink(mb / 2).new_size(mb, true).unwrap(),
            mb / 2
        );
        assert!(matches!(
            SizeChange::Shrink(2 * mb).new_size(mb, true),
            Err(ResizeError::NotPositive)
        ));
        assert!(matches!(
            SizeChange::Grow(u64::MAX).new_size(mb, false),
            Err(ResizeError::TooLarge)
        ));
    }
}
