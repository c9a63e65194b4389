//! [`Image`]: one opened image (raw or qcow2) with its backing chain, and
//! the format-independent entry points [`open`], [`create`], [`probe`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::io::io_err;
use crate::lock::Request;
use crate::qcow2::Qcow2;
use crate::raw::RawImage;
use crate::{
    BlockBackend, BlockStatus, CheckReport, CreateOptions, Error, Format, ImageInfo, LayerStatus,
    OpenOptions, Repair, Result, SnapshotInfo, MAX_CHAIN_DEPTH,
};

/// An opened image: raw file or qcow2, with its backing chain.
///
/// Every method takes `&self`; an `Image` can be shared between threads
/// (wrap it in an `Arc`).
pub struct Image {
    filename: String,
    kind: Kind,
}

enum Kind {
    Raw(RawImage),
    Qcow2(Box<Qcow2>),
}

/// Detects the format of the file at `path`: qcow2 by its magic, raw
/// otherwise (as qemu-img does).
pub fn probe(path: &Path) -> Result<Format> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| io_err(&name, e))?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = f.read(&mut magic[got..]).map_err(|e| io_err(&name, e))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got == 4 && magic == crate::qcow2::MAGIC.to_be_bytes() {
        Ok(Format::Qcow2)
    } else {
        Ok(Format::Raw)
    }
}

/// Opens the image at `path` (and, unless told otherwise, its backing chain,
/// read-only). Relative backing names resolve against the image's folder;
/// cycles and chains deeper than [`MAX_CHAIN_DEPTH`] are refused.
///
/// Each file of the chain is locked as QEMU locks it (see
/// [`OpenOptions::sharing`]); an open that conflicts with another user of a
/// file fails with [`Error::Locked`]. The locks go when the image drops.
pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Image> {
    let path = path.as_ref();
    let req = Request::top(opts.sharing, opts.read_only)?;
    let mut seen = Vec::new();
    open_chain(path, opts, opts.format, opts.read_only, req, &mut seen)
}

fn open_chain(
    path: &Path,
    opts: &OpenOptions,
    format: Option<Format>,
    read_only: bool,
    req: Request,
    seen: &mut Vec<PathBuf>,
) -> Result<Image> {
    let filename = path.display().to_string();
    if seen.len() >= MAX_CHAIN_DEPTH {
        return Err(Error::ChainTooDeep(MAX_CHAIN_DEPTH));
    }
    let canon = std::fs::canonicalize(path).map_err(|e| io_err(&filename, e))?;
    if seen.contains(&canon) {
        return Err(Error::BackingCycle { path: filename });
    }
    seen.push(canon);
    let format = match format {
        Some(f) => f,
        None => probe(path)?,
    };
    let kind = match format {
        Format::Raw => Kind::Raw(RawImage::open(path, &filename, read_only, req)?),
        Format::Qcow2 => {
            let mut q = Qcow2::open(path, &filename, read_only, opts, req)?;
            if opts.follow_backing {
                if let Some(name) = q.backing_name().map(str::to_string) {
                    let bpath = crate::resolve_backing_path(path, &name);
                    // The top-level override applies to the first backing
                    // file only; deeper layers use their own headers.
                    let bfmt = if seen.len() == 1 {
                        opts.backing_format.or(q.backing_format())
                    } else {
                        q.backing_format()
                    };
                    let sub = OpenOptions {
                        backing_format: None,
                        for_check: false,
                        ..opts.clone()
                    };
                    let backing = open_chain(&bpath, &sub, bfmt, true, req.for_backing(), seen)?;
                    q.attach_backing(Box::new(backing));
                }
            }
            Kind::Qcow2(Box::new(q))
        }
    };
    Ok(Image { filename, kind })
}

/// Creates a new image file at `path` (truncating an existing one). For
/// qcow2 with a backing file and no size, the backing file is opened to take
/// its size.
pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<()> {
    let path = path.as_ref();
    match opts.format {
        Format::Raw => {
            if opts.backing_file.is_some() {
                return Err(Error::InvalidOption(
                    "raw images cannot have a backing file".into(),
                ));
            }
            let size = opts
                .size
                .ok_or_else(|| Error::InvalidOption("image size is required".into()))?;
            RawImage::create(path, size, opts.preallocation)
        }
        Format::Qcow2 => {
            let size = match opts.size {
                Some(s) => s,
                None => {
                    let b = opts
                        .backing_file
                        .as_deref()
                        .ok_or_else(|| Error::InvalidOption("image size is required".into()))?;
                    let bpath = crate::resolve_backing_path(path, b);
                    let o = OpenOptions {
                        read_only: true,
                        format: opts.backing_format,
                        sharing: crate::Sharing::Tool,
                        ..Default::default()
                    };
                    open(&bpath, &o)?.len()
                }
            };
            // qcow2 sizes are whole 512-byte sectors (QEMU rounds up too).
            crate::qcow2::create(path, size.div_ceil(512) * 512, opts)
        }
    }
}

impl Image {
    /// Same as [`open`].
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Image> {
        open(path, opts)
    }

    /// The path as given to [`open`] (or as resolved for a backing file).
    pub fn filename(&self) -> &str {
        &self.filename
    }

    pub fn format(&self) -> Format {
        match &self.kind {
            Kind::Raw(_) => Format::Raw,
            Kind::Qcow2(_) => Format::Qcow2,
        }
    }

    /// The opened backing image, if any (and if the chain was followed).
    pub fn backing(&self) -> Option<&Image> {
        match &self.kind {
            Kind::Raw(_) => None,
            Kind::Qcow2(q) => q.backing(),
        }
    }

    /// Backing file name as stored in the header.
    pub fn backing_filename(&self) -> Option<String> {
        match &self.kind {
            Kind::Raw(_) => None,
            Kind::Qcow2(q) => q.backing_name().map(str::to_string),
        }
    }

    /// Backing format as stored in the header extension.
    pub fn backing_format(&self) -> Option<Format> {
        match &self.kind {
            Kind::Raw(_) => None,
            Kind::Qcow2(q) => q.backing_format(),
        }
    }

    /// qcow2 cluster size (`None` for raw).
    pub fn cluster_size(&self) -> Option<u64> {
        match &self.kind {
            Kind::Raw(_) => None,
            Kind::Qcow2(q) => Some(q.cluster_size()),
        }
    }

    /// What `qemu-img info` shows about this image (not its backing files;
    /// walk [`backing`](Self::backing) for `--backing-chain`).
    pub fn info(&self) -> Result<ImageInfo> {
        let actual_size = self.actual_size()?;
        let mut info = ImageInfo {
            filename: self.filename.clone(),
            format: self.format(),
            virtual_size: self.len(),
            actual_size,
            cluster_size: None,
            dirty_flag: None,
            backing_filename: None,
            full_backing_filename: None,
            backing_filename_format: None,
            snapshots: Vec::new(),
            qcow2: None,
        };
        if let Kind::Qcow2(q) = &self.kind {
            info.cluster_size = Some(q.cluster_size());
            info.dirty_flag = Some(q.is_dirty());
            if let Some(b) = q.backing_name() {
                info.backing_filename = Some(b.to_string());
                info.full_backing_filename = Some(
                    crate::resolve_backing_path(Path::new(&self.filename), b)
                        .display()
                        .to_string(),
                );
            }
            info.backing_filename_format = q.backing_format().map(|f| f.name().to_string());
            info.snapshots = q.snapshots();
            info.qcow2 = Some(q.qcow2_info());
        }
        Ok(info)
    }

    /// Bytes the image file occupies on the host (`actual-size`).
    pub fn actual_size(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.filename).map_err(|e| io_err(&self.filename, e))?;
        Ok(m.blocks() * 512)
    }

    /// Status of the extent at `offset` (at most `max_len` bytes) in this
    /// layer only.
    pub fn layer_status(&self, offset: u64, max_len: u64) -> Result<LayerStatus> {
        self.check_range(offset, max_len.min(1))?;
        let max_len = max_len.min(self.len() - offset);
        match &self.kind {
            Kind::Raw(r) => r.layer_status(offset, max_len),
            Kind::Qcow2(q) => q.layer_status(offset, max_len),
        }
    }

    /// Status of the extent at `offset` (at most `max_len` bytes) through the
    /// backing chain, like `qemu-img map`: the first layer that has data or
    /// zeros decides; `depth` counts layers from the top.
    pub fn block_status(&self, offset: u64, max_len: u64) -> Result<BlockStatus> {
        self.check_range(offset, max_len.min(1))?;
        let mut len = max_len.min(self.len() - offset);
        let mut layer: &Image = self;
        let mut depth = 0u32;
        loop {
            if offset >= layer.len() {
                // Past the end of a shorter backing file: zeros, decided here.
                return Ok(BlockStatus {
                    len,
                    depth,
                    present: false,
                    zero: true,
                    data: false,
                    compressed: false,
                    offset: None,
                });
            }
            let st = layer.layer_status(offset, len)?;
            len = st.len;
            if st.zero || st.data {
                return Ok(BlockStatus {
                    len,
                    depth,
                    present: st.allocated,
                    zero: st.zero,
                    data: st.data,
                    compressed: st.compressed,
                    offset: st.offset,
                });
            }
            match layer.backing() {
                Some(b) => {
                    layer = b;
                    depth += 1;
                }
                None => {
                    return Ok(BlockStatus {
                        len,
                        depth,
                        present: false,
                        zero: false,
                        data: false,
                        compressed: false,
                        offset: None,
                    })
                }
            }
        }
    }

    /// Internal snapshots (empty for raw).
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        match &self.kind {
            Kind::Raw(_) => Vec::new(),
            Kind::Qcow2(q) => q.snapshots(),
        }
    }

    /// Creates an internal snapshot named `name` (qcow2 only).
    pub fn snapshot_create(&self, name: &str) -> Result<()> {
        self.qcow2("snapshot")?.snapshot_create(name)
    }

    /// Reverts the disk to the snapshot with this id or name.
    pub fn snapshot_apply(&self, id_or_name: &str) -> Result<()> {
        self.qcow2("snapshot")?.snapshot_apply(id_or_name)
    }

    /// Deletes the snapshot with this id or name.
    pub fn snapshot_delete(&self, id_or_name: &str) -> Result<()> {
        self.qcow2("snapshot")?.snapshot_delete(id_or_name)
    }

    /// Checks the image's metadata (qcow2; raw images have nothing to check
    /// and return an empty report) and repairs what `repair` allows.
    pub fn check(&self, repair: Repair) -> Result<CheckReport> {
        match &self.kind {
            Kind::Raw(_) => Ok(CheckReport::default()),
            Kind::Qcow2(q) => q.check(repair),
        }
    }

    /// Changes the virtual size. Shrinking discards the data past the new
    /// end and is refused unless `allow_shrink` (qemu-img's `--shrink`).
    pub fn resize(&self, new_size: u64, allow_shrink: bool) -> Result<()> {
        if new_size < self.len() && !allow_shrink {
            return Err(Error::NotPossible(
                "use --shrink to shrink images (data past the new end is lost)".into(),
            ));
        }
        match &self.kind {
            Kind::Raw(r) => r.resize(new_size),
            Kind::Qcow2(q) => q.resize(new_size),
        }
    }

    /// Writes one cluster compressed (qcow2 only; `convert -c`): `offset`
    /// must be cluster-aligned and `buf` one cluster long, or shorter for the
    /// last cluster of the disk. Falls back to a normal write when the data
    /// does not compress.
    pub fn write_compressed(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.qcow2("compressed writes")?
            .write_compressed(buf, offset)
    }

    /// Rewrites the backing file name and format in the header without
    /// touching data (`rebase -u`; the safe rebase copies data first).
    /// `None` removes the backing file.
    pub fn set_backing(&self, name: Option<&str>, format: Option<Format>) -> Result<()> {
        self.qcow2("changing the backing file")?
            .set_backing(name, format)
    }

    /// Drops every cluster of this layer so that everything reads from the
    /// backing file again (what `commit` does to the top image).
    pub fn make_empty(&self) -> Result<()> {
        match &self.kind {
            Kind::Raw(r) => r.write_zeroes(0, r.len(), true),
            Kind::Qcow2(q) => q.make_empty(),
        }
    }

    fn qcow2(&self, op: &'static str) -> Result<&Qcow2> {
        match &self.kind {
            Kind::Qcow2(q) => Ok(q),
            Kind::Raw(_) => Err(Error::FormatUnsupported { format: "raw", op }),
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.len();
        if offset.checked_add(len).is_none_or(|end| end > size) || (len == 0 && offset > size) {
            return Err(Error::OutOfRange { offset, len, size });
        }
        Ok(())
    }
}

impl BlockBackend for Image {
    fn len(&self) -> u64 {
        match &self.kind {
            Kind::Raw(r) => r.len(),
            Kind::Qcow2(q) => q.len(),
        }
    }

    fn is_read_only(&self) -> bool {
        match &self.kind {
            Kind::Raw(r) => r.is_read_only(),
            Kind::Qcow2(q) => q.is_read_only(),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        match &self.kind {
            Kind::Raw(r) => r.read_at(buf, offset),
            Kind::Qcow2(q) => q.read_at(buf, offset),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        match &self.kind {
            Kind::Raw(r) => r.write_at(buf, offset),
            Kind::Qcow2(q) => q.write_at(buf, offset),
        }
    }

    fn flush(&self) -> Result<()> {
        match &self.kind {
            Kind::Raw(r) => r.flush(),
            Kind::Qcow2(q) => q.flush(),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.check_range(offset, len)?;
        match &self.kind {
            Kind::Raw(r) => r.write_zeroes(offset, len, may_unmap),
            Kind::Qcow2(q) => q.write_zeroes(offset, len, may_unmap),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        match &self.kind {
            Kind::Raw(r) => r.discard(offset, len),
            Kind::Qcow2(q) => q.discard(offset, len),
        }
    }
}
