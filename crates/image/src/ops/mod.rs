//! Format-independent image operations behind `virtkit img` (convert,
//! commit, rebase, compare, measure, map, bench).
//!
//! Everything here works on [`BlockBackend`](crate::BlockBackend)s plus a
//! block-status query ([`Status`]), so it serves raw files and qcow2 chains
//! alike.

pub mod bench;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod map;
pub mod measure;
pub mod options;
pub mod rebase;
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
