//! Format-independent image operations behind `virtkit img` (create's and
//! convert's backing checks, check with repair, convert, commit, rebase,
//! resize, compare, measure, map, bench), one operation a file.
//!
//! Everything here works on [`BlockBackend`](crate::BlockBackend)s plus a
//! block-status query ([`Status`]), so it serves raw files and qcow2 chains
//! alike. Long operations report progress through a `FnMut(done, total)`
//! callback.
//!
//! Where rendering lives: the library decides and returns structured
//! results (plain structs such as [`map::MapEntry`], [`check::CheckRun`],
//! [`measure::Measurement`], [`crate::ImageInfo`], whose field names follow
//! qemu-img's JSON keys); it never formats qemu-img's human text or JSON
//! output and never prints. The CLI (`virtkit img`) renders every command's
//! output, human and JSON alike. Error messages are the exception: their
//! `Display` uses qemu-img's wording so the CLI can show them as they are.

pub mod bench;
pub mod check;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod create;
pub mod map;
pub mod measure;
pub mod options;
pub mod rebase;
pub mod resize;
pub mod size;

pub use crate::BlockStatus as Status;

/// A block-status query over a whole backing chain ("above NULL" in qemu):
/// the status of the range starting at `offset`, at most `max_len` bytes.
/// [`Image`](crate::Image) implements it with
/// [`Image::block_status`](crate::Image::block_status).
pub trait StatusSource {
    fn status(&self, offset: u64, max_len: u64) -> crate::Result<Status>;
}

impl StatusSource for crate::Image {
    fn status(&self, offset: u64, max_len: u64) -> crate::Result<Status> {
        self.block_status(offset, max_len)
    }
}

/// Whether a range with this status reads as zeros: a zero extent, or one
/// that no layer of the chain allocates.
pub fn reads_as_zero(st: &Status) -> bool {
    st.zero || !(st.present || st.data)
}

/// Size of the buffers the copying operations use: large enough to amortise
/// per-request costs, small enough to keep memory bounded.
pub const IO_CHUNK: usize = 2 << 20;
