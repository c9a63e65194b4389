//! Disk images for virtkit: raw files and qcow2 chains behind one
//! [`BlockBackend`] trait, plus qemu-img-compatible operations.
//!
//! Entry points: [`open`] an image (with its backing chain) into an [`Image`],
//! [`create`] a new raw or qcow2 file, [`probe`] a file's format. An [`Image`]
//! is a [`BlockBackend`] (thread-safe, `&self` methods) and also exposes what
//! `qemu-img` needs: [`Image::info`], [`Image::block_status`], snapshots,
//! [`Image::check`], [`Image::resize`], [`Image::write_compressed`],
//! [`Image::set_backing`] and [`Image::make_empty`].
//!
//! Every open locks the image file as QEMU does (OFD byte-range locks on
//! QEMU's bytes, see [`OpenOptions::sharing`]): a second writer, in this
//! process, another virtkit or a QEMU, is refused with [`Error::Locked`].

use std::path::{Path, PathBuf};

mod image;
mod io;
mod lock;
mod qcow2;
mod raw;

pub use image::{create, open, probe, Image};
pub use qcow2::compress::DecompressError;

/// Errors of the image library. Every variant names what is wrong, so the
/// command line can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("access beyond the end of the image: offset {offset} + length {len} > size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("image is read-only")]
    ReadOnly,
    /// Another user of the file (this process, another process, or QEMU)
    /// holds a permission lock that conflicts with this open; QEMU's words.
    /// `shared`: we refuse to share `perm` and someone holds it; otherwise
    /// we want `perm` and someone refuses to share it.
    #[error(
        "Failed to get {}\"{perm}\" lock\nIs another process using the image [{path}]?",
        if *shared { "shared " } else { "" }
    )]
    Locked {
        path: String,
        perm: &'static str,
        shared: bool,
    },
    /// The file is not in the format that was asked for (or probed).
    #[error("{path}: not a {format} image: {reason}")]
    NotFormat {
        path: String,
        format: &'static str,
        reason: String,
    },
    /// The image's metadata is inconsistent; `what` says where.
    #[error("{path}: corrupt image: {what}")]
    Corrupt { path: String, what: String },
    /// A compressed cluster whose data does not decompress.
    #[error("{path}: corrupt image: compressed cluster at {offset:#x}: {source}")]
    BadCompressed {
        path: String,
        offset: u64,
        #[source]
        source: DecompressError,
    },
    /// The qcow2 header carries the corrupt bit: the image may only be read
    /// (or repaired with `check`).
    #[error("{path}: image is marked corrupt; it can only be opened read-only (run check -r all)")]
    MarkedCorrupt { path: String },
    /// A feature this library does not implement (unknown incompatible
    /// feature bit, external data file, encryption, ...).
    #[error("{path}: unsupported feature: {feature}")]
    Unsupported { path: String, feature: String },
    /// A size or count beyond what the library accepts (caps protect against
    /// absurd allocations from hostile headers).
    #[error("{what} too large: {value} (limit {limit})")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// An option value that makes no sense (bad cluster size, refcount width...).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The backing chain loops back on itself.
    #[error("backing chain cycle: {path} is its own backing file (directly or indirectly)")]
    BackingCycle { path: String },
    /// The backing chain is deeper than [`MAX_CHAIN_DEPTH`].
    #[error("backing chain deeper than {0} images")]
    ChainTooDeep(usize),
    /// A refcount would exceed the maximum of the image's refcount width.
    #[error("refcount overflow: cluster at offset {offset:#x} would exceed the {bits}-bit refcount maximum")]
    RefcountOverflow { offset: u64, bits: u32 },
    /// No snapshot with that id or name.
    #[error("snapshot '{0}' not found")]
    SnapshotNotFound(String),
    /// A snapshot with that name or id already exists.
    #[error("snapshot '{0}' already exists")]
    SnapshotExists(String),
    /// The request is valid but the image cannot do it (e.g. shrinking an
    /// image with snapshots, writing a misaligned compressed cluster).
    #[error("{0}")]
    NotPossible(String),
    /// The operation is not available for this image format.
    #[error("operation not supported for {format} images: {op}")]
    FormatUnsupported {
        format: &'static str,
        op: &'static str,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Deepest backing chain [`open`] follows; guards against unbounded recursion
/// on crafted chains (every layer costs a file descriptor and some memory).
pub const MAX_CHAIN_DEPTH: usize = 256;

/// A virtual disk as a device model sees it: a byte-addressed array of
/// `len()` bytes.
///
/// Implementations are shared between threads (virtio-blk serves several
/// queues; the CLI's bench runs several requests in flight), so every method
/// takes `&self` and implementations synchronise internally.
pub trait BlockBackend: Send + Sync {
    /// Virtual size in bytes.
    fn len(&self) -> u64;

    /// True for an image of size zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    /// Reads exactly `buf.len()` bytes at `offset`. Unallocated areas read as
    /// zeros (or from the backing file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes all of `buf` at `offset`. Not durable until [`flush`](Self::flush).
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes every completed write durable (data and metadata).
    fn flush(&self) -> Result<()>;

    /// Makes `len` bytes at `offset` read as zeros. With `may_unmap`, the
    /// space may be released on the host.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()>;

    /// Tells the image that `len` bytes at `offset` are no longer needed; they
    /// read back as zeros or as the backing file afterwards.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
}

/// Image file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    /// The name qemu-img uses (`raw`, `qcow2`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Parses a qemu-img format name.
    pub fn from_name(name: &str) -> Result<Format> {
        match name {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            other => Err(Error::InvalidOption(format!(
                "unknown image format '{other}' (supported: raw, qcow2)"
            ))),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How [`open`] treats an image and its backing chain.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open without write access (backing files are always read-only).
    pub read_only: bool,
    /// Format of the top image; `None` probes it.
    pub format: Option<Format>,
    /// Open the backing chain. Without it, unallocated clusters read as zeros
    /// (like qemu-img's `-u` modes).
    pub follow_backing: bool,
    /// Format of the first backing file, overriding the one recorded in the
    /// header (and probing).
    pub backing_format: Option<Format>,
    /// Bytes of L2 tables cached per qcow2 image (`None`: enough to map 8 GiB
    /// of virtual disk, at most [`DEFAULT_MAX_L2_CACHE`]).
    pub l2_cache_size: Option<usize>,
    /// Bytes of refcount blocks cached per qcow2 image (`None`: a quarter of
    /// the L2 cache, at least 4 clusters).
    pub refcount_cache_size: Option<usize>,
    /// Open for `check`: a dirty image is not repaired on open, and a
    /// corrupt-marked image may be opened read-write so that `check` can
    /// repair it.
    pub for_check: bool,
    /// Who uses the image, which decides what others may do with the file
    /// while it is open (QEMU's permission locks, see [`Sharing`]).
    pub sharing: Sharing,
}

/// How an open image shares its file with other users. [`open`] publishes
/// the choice with QEMU's lock bytes and refuses to open when it conflicts
/// with another user's (then [`Error::Locked`]). In every mode a qcow2 file
/// (and the backing chain, opened read-only) refuses other writers: its
/// metadata must not change under it. The modes differ for raw files and
/// in what `-U` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// A guest's disk (QEMU's `-drive` with a virtio-blk device): others
    /// may read the image, but nobody else may write it while it is open,
    /// even when this open only reads.
    #[default]
    Device,
    /// A one-shot tool (qemu-img, qemu-io): asks only for what it uses and
    /// shares what the format allows, so a raw file can be read, or written
    /// by two tools, at once; another user that refuses to share writes
    /// still keeps a writing tool out.
    Tool,
    /// qemu-img's `-U`/`--force-share`: read-only, and lets anyone else do
    /// anything, so it opens an image a VM is writing (what it reads may
    /// then be inconsistent). Refused for a read-write open.
    ForceShare,
}

/// Upper bound of the default L2 cache (QEMU's default maximum is 32 MiB too).
pub const DEFAULT_MAX_L2_CACHE: usize = 32 << 20;

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            format: None,
            follow_backing: true,
            backing_format: None,
            l2_cache_size: None,
            refcount_cache_size: None,
            for_check: false,
            sharing: Sharing::Device,
        }
    }
}

impl OpenOptions {
    /// Read-only, probed format, backing chain followed.
    pub fn read_only() -> Self {
        OpenOptions {
            read_only: true,
            ..Default::default()
        }
    }

    /// Read-write, probed format, backing chain followed.
    pub fn read_write() -> Self {
        OpenOptions::default()
    }
}

/// qcow2 compatibility level (`compat=` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compat {
    /// Version 2 ("0.10").
    V2,
    /// Version 3 ("1.1").
    V3,
}

impl Compat {
    /// "0.10" or "1.1", as qemu-img prints it.
    pub fn name(self) -> &'static str {
        match self {
            Compat::V2 => "0.10",
            Compat::V3 => "1.1",
        }
    }

    /// Parses "0.10"/"v2" or "1.1"/"v3".
    pub fn from_name(s: &str) -> Result<Compat> {
        match s {
            "0.10" | "v2" | "2" => Ok(Compat::V2),
            "1.1" | "v3" | "3" => Ok(Compat::V3),
            _ => Err(Error::InvalidOption(format!(
                "invalid compat level '{s}' (expected 0.10 or 1.1)"
            ))),
        }
    }
}

/// Compression algorithm of a qcow2 image (`compression_type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (no zlib header), 4 KiB window: the historical default.
    Zlib,
    /// Zstandard frames.
    Zstd,
}

impl CompressionType {
    /// "zlib" or "zstd".
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }

    /// Parses "zlib" or "zstd".
    pub fn from_name(s: &str) -> Result<CompressionType> {
        match s {
            "zlib" => Ok(CompressionType::Zlib),
            "zstd" => Ok(CompressionType::Zstd),
            _ => Err(Error::InvalidOption(format!(
                "invalid compression type '{s}' (expected zlib or zstd)"
            ))),
        }
    }
}

/// `preallocation=` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocation {
    /// Allocate nothing up front.
    Off,
    /// Allocate all metadata (L2 tables) and data clusters, without writing data.
    Metadata,
    /// Like `Metadata`, and reserve the space with fallocate.
    Falloc,
    /// Like `Metadata`, and write zeros to all data.
    Full,
}

impl Preallocation {
    /// Parses "off", "metadata", "falloc" or "full".
    pub fn from_name(s: &str) -> Result<Preallocation> {
        match s {
            "off" => Ok(Preallocation::Off),
            "metadata" => Ok(Preallocation::Metadata),
            "falloc" => Ok(Preallocation::Falloc),
            "full" => Ok(Preallocation::Full),
            _ => Err(Error::InvalidOption(format!(
                "invalid preallocation mode '{s}' (expected off, metadata, falloc or full)"
            ))),
        }
    }

    /// The qemu-img name.
    pub fn name(self) -> &'static str {
        match self {
            Preallocation::Off => "off",
            Preallocation::Metadata => "metadata",
            Preallocation::Falloc => "falloc",
            Preallocation::Full => "full",
        }
    }
}

/// Options of [`create`], mirroring `qemu-img create -f FMT -o ...`.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub format: Format,
    /// Virtual size in bytes; `None` takes the backing file's size (qcow2
    /// with a backing file only).
    pub size: Option<u64>,
    /// qcow2 cluster size, a power of two from 512 to 2 MiB (default 64 KiB).
    pub cluster_size: u64,
    pub compat: Compat,
    /// Set the lazy_refcounts compatible feature (v3 only).
    pub lazy_refcounts: bool,
    /// Extended L2 entries with 32 subclusters per cluster (v3, cluster size
    /// at least 16 KiB).
    pub extended_l2: bool,
    /// Refcount width: 1, 2, 4, 8, 16, 32 or 64 (anything but 16 needs v3).
    pub refcount_bits: u32,
    pub compression_type: CompressionType,
    pub preallocation: Preallocation,
    /// Backing file name as stored in the header (relative names resolve
    /// against the new image's folder).
    pub backing_file: Option<String>,
    /// Backing format stored in the header extension.
    pub backing_format: Option<Format>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            format: Format::Qcow2,
            size: None,
            cluster_size: 65536,
            compat: Compat::V3,
            lazy_refcounts: false,
            extended_l2: false,
            refcount_bits: 16,
            compression_type: CompressionType::Zlib,
            preallocation: Preallocation::Off,
            backing_file: None,
            backing_format: None,
        }
    }
}

/// One internal snapshot, as `qemu-img snapshot -l` and `info` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Unique id string (qemu numbers them "1", "2", ...).
    pub id: String,
    pub name: String,
    /// Size of the saved VM state (0 for disk-only snapshots).
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Nanoseconds part of the creation time.
    pub date_nsec: u32,
    /// Guest clock at snapshot time, nanoseconds.
    pub vm_clock_nsec: u64,
    /// Instruction count (record/replay), if recorded.
    pub icount: Option<u64>,
    /// Virtual disk size when the snapshot was taken (v3 extra data).
    pub disk_size: Option<u64>,
}

/// qcow2-specific part of [`ImageInfo`] (qemu's `format-specific.data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Info {
    /// "0.10" or "1.1".
    pub compat: String,
    /// "zlib" or "zstd".
    pub compression_type: String,
    pub lazy_refcounts: bool,
    pub refcount_bits: u32,
    pub corrupt: bool,
    pub extended_l2: bool,
    /// External data file name (always `None`: such images are refused).
    pub data_file: Option<String>,
}

/// What `qemu-img info --output=json` reports for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The path as given to [`open`].
    pub filename: String,
    pub format: Format,
    pub virtual_size: u64,
    /// Bytes allocated on the host (st_blocks * 512).
    pub actual_size: u64,
    pub cluster_size: Option<u64>,
    /// qcow2: the dirty bit of the header.
    pub dirty_flag: Option<bool>,
    /// Backing file name as stored in the header.
    pub backing_filename: Option<String>,
    /// Backing file name resolved against the image's folder.
    pub full_backing_filename: Option<String>,
    /// Backing format from the header extension.
    pub backing_filename_format: Option<String>,
    pub snapshots: Vec<SnapshotInfo>,
    pub qcow2: Option<Qcow2Info>,
}

/// Status of one extent of this layer only (see [`Image::layer_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerStatus {
    /// Bytes from the queried offset that share this status (> 0).
    pub len: u64,
    /// This layer decides the content (data or zeros); `false` means the
    /// content comes from the backing file (or zeros without one).
    pub allocated: bool,
    /// Reads as zeros (zero cluster, hole, or unallocated with no backing).
    pub zero: bool,
    /// Backed by data stored in this layer.
    pub data: bool,
    /// Stored compressed (no meaningful host offset).
    pub compressed: bool,
    /// Host file offset of the data, when it is stored contiguously.
    pub offset: Option<u64>,
}

/// Status of one extent seen through the whole backing chain, with
/// qemu-img map's meaning (see [`Image::block_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatus {
    /// Bytes from the queried offset that share this status (> 0).
    pub len: u64,
    /// Depth in the chain of the layer that decides the content (0 = top).
    pub depth: u32,
    /// Allocated in the layer at `depth` (qemu-img map's "present").
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    /// Host offset in the file of the layer at `depth`.
    pub offset: Option<u64>,
}

/// What [`Image::check`] may repair (`qemu-img check -r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    None,
    Leaks,
    All,
}

/// Result of [`Image::check`], with qemu-img check's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Errors that make the image unsafe (refcount too low, bad L2 entries...).
    pub corruptions: u64,
    /// Clusters with refcount too high (space wasted, harmless).
    pub leaks: u64,
    /// Errors of the check itself (I/O, unreadable metadata).
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    /// Guest clusters allocated in the active table (data, compressed, zero-alloc).
    pub allocated_clusters: u64,
    /// Virtual size in clusters.
    pub total_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
    /// Offset just past the last used cluster of the file.
    pub image_end_offset: u64,
    /// One line per problem, in qemu-img's wording ("ERROR cluster 5
    /// refcount=0 reference=1", "Leaked cluster 7 refcount=1 reference=0").
    pub messages: Vec<String>,
}

/// Resolves a backing file name against the folder of the image that names
/// it, like QEMU: absolute names stay, relative ones are joined to the
/// image's directory (as given, not canonicalised).
pub fn resolve_backing_path(image_path: &Path, backing: &str) -> PathBuf {
    let b = Path::new(backing);
    if b.is_absolute() {
        return b.to_path_buf();
    }
    match image_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(b),
        _ => b.to_path_buf(),
    }
}

pub mod ops;
