//! `map`: the allocation map of an image and its backing chain, merged as
//! `qemu-img map` merges it (the CLI renders the human table or JSON).

use super::{Status, StatusSource};
use crate::Image;

/// One merged extent of the map (qemu's MapEntry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub depth: u32,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    /// Host offset in `filename`.
    pub offset: Option<u64>,
    /// The file of the layer at `depth`.
    pub filename: String,
}

/// Errors of `map`.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error(transparent)]
    Image(#[from] crate::Error),
    /// The human format cannot show where such data lives.
    #[error("File contains external, encrypted or compressed clusters.")]
    NoOffset,
}

fn mergeable(curr: &MapEntry, next: &MapEntry) -> bool {
    curr.length != 0
        && curr.zero == next.zero
        && curr.data == next.data
        && curr.depth == next.depth
        && curr.present == next.present
        && curr.compressed == next.compressed
        && curr.filename == next.filename
        && match (curr.offset, next.offset) {
            (Some(a), Some(b)) => a + curr.length == b,
            (None, None) => true,
            _ => false,
        }
}

/// The filename of the layer `depth` levels below `image`.
fn layer_name(image: &Image, depth: u32) -> String {
    let mut layer = image;
    for _ in 0..depth {
        match layer.backing() {
            Some(b) => layer = b,
            None => break,
        }
    }
    layer.filename().to_string()
}

fn entry(image: &Image, start: u64, st: &Status) -> MapEntry {
    // Nothing allocated anywhere: qemu reports the bottom layer's "zero".
    let zero = st.zero || !(st.present || st.data);
    MapEntry {
        start,
        length: st.len,
        depth: st.depth,
        present: st.present,
        zero,
        data: st.data,
        compressed: st.compressed,
        offset: st.offset,
        filename: layer_name(image, st.depth),
    }
}

/// Walks `[start, start + max_len)` of `image` and returns qemu's merged
/// entries.
pub fn map(image: &Image, start: u64, max_len: Option<u64>) -> crate::Result<Vec<MapEntry>> {
    map_with(image, start, max_len, |e, _| e)
}

/// Like [`map`], with a hook that may adjust each new entry given the
/// previous one (the human format coalesces zero-ish entries).
fn map_with(
    image: &Image,
    start: u64,
    max_len: Option<u64>,
    mut adjust: impl FnMut(MapEntry, Option<&MapEntry>) -> MapEntry,
) -> crate::Result<Vec<MapEntry>> {
    use crate::BlockBackend;
    let size = image.len();
    let start = start.min(size);
    let end = match max_len {
        Some(n) => start.saturating_add(n).min(size),
        None => size,
    };
    let mut out: Vec<MapEntry> = Vec::new();
    let mut offset = start;
    while offset < end {
        let st = image.status(offset, end - offset)?;
        let len = st.len.clamp(1, end - offset);
        let st = Status { len, ..st };
        let next = adjust(entry(image, offset, &st), out.last());
        match out.last_mut() {
            Some(curr) if mergeable(curr, &next) => curr.length += next.length,
            _ => out.push(next),
        }
        offset += len;
    }
    Ok(out)
}

/// The entries `qemu-img map`'s human format shows: like [`map`], but
/// unallocated, zero and zero-with-data extents count as one kind (zero), so
/// more of them coalesce, as qemu-img does. Fails when data has no host
/// offset to show (compressed clusters).
pub fn map_human(
    image: &Image,
    start: u64,
    max_len: Option<u64>,
) -> Result<Vec<MapEntry>, MapError> {
    let entries = map_with(image, start, max_len, |mut e, _| {
        if !e.data || e.zero {
            e.data = false;
            e.zero = true;
        }
        e
    })?;
    if entries.iter().any(|e| e.data && e.offset.is_none()) {
        return Err(MapError::NoOffset);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(start: u64, length: u64, offset: Option<u64>) -> MapEntry {
        MapEntry {
            start,
            length,
            depth: 0,
            present: true,
            zero: false,
            data: true,
            compressed: false,
            offset,
            filename: "a".into(),
        }
    }

    #[test]
    fn merge_needs_contiguous_offsets() {
        assert!(mergeable(
            &e(0, 4096, Some(8192)),
            &e(4096, 4096, Some(12288))
        ));
        assert!(!mergeable(
            &e(0, 4096, Some(8192)),
            &e(4096, 4096, Some(65536))
        ));
        assert!(!mergeable(&e(0, 4096, Some(8192)), &e(4096, 4096, None)));
    }
}
