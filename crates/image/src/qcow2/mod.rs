//! qcow2 images (work in progress: the API is final, the engine lands next).

use std::path::Path;

use crate::{
    CheckReport, CreateOptions, Error, Format, Image, LayerStatus, Measure, OpenOptions,
    Qcow2Info, Repair, Result, SnapshotInfo,
};

pub(crate) const MAGIC: u32 = 0x5146_49fb;

pub(crate) struct Qcow2 {
    backing: Option<Box<Image>>,
}

fn not_ready() -> Error {
    Error::NotPossible("qcow2 engine not ready yet".into())
}

pub(crate) fn create(_path: &Path, _size: u64, _opts: &CreateOptions) -> Result<()> {
    Err(not_ready())
}

pub(crate) fn measure(_opts: &CreateOptions, _size: u64, _allocated: u64) -> Result<Measure> {
    Err(not_ready())
}

impl Qcow2 {
    pub(crate) fn open(_p: &Path, _n: &str, _ro: bool, _o: &OpenOptions) -> Result<Qcow2> {
        Err(not_ready())
    }
    pub(crate) fn backing_name(&self) -> Option<&str> {
        None
    }
    pub(crate) fn backing_format(&self) -> Option<Format> {
        None
    }
    pub(crate) fn attach_backing(&mut self, b: Box<Image>) {
        self.backing = Some(b);
    }
    pub(crate) fn backing(&self) -> Option<&Image> {
        self.backing.as_deref()
    }
    pub(crate) fn cluster_size(&self) -> u64 {
        0
    }
    pub(crate) fn is_dirty(&self) -> bool {
        false
    }
    pub(crate) fn snapshots(&self) -> Vec<SnapshotInfo> {
        Vec::new()
    }
    pub(crate) fn qcow2_info(&self) -> Qcow2Info {
        unreachable!()
    }
    pub(crate) fn layer_status(&self, _o: u64, _l: u64) -> Result<LayerStatus> {
        Err(not_ready())
    }
    pub(crate) fn snapshot_create(&self, _n: &str) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn snapshot_apply(&self, _n: &str) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn snapshot_delete(&self, _n: &str) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn check(&self, _r: Repair) -> Result<CheckReport> {
        Err(not_ready())
    }
    pub(crate) fn resize(&self, _s: u64) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn write_compressed(&self, _b: &[u8], _o: u64) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn set_backing(&self, _n: Option<&str>, _f: Option<Format>) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn make_empty(&self) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn len(&self) -> u64 {
        0
    }
    pub(crate) fn is_read_only(&self) -> bool {
        true
    }
    pub(crate) fn read_at(&self, _b: &mut [u8], _o: u64) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn write_at(&self, _b: &[u8], _o: u64) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn flush(&self) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn write_zeroes(&self, _o: u64, _l: u64, _u: bool) -> Result<()> {
        Err(not_ready())
    }
    pub(crate) fn discard(&self, _o: u64, _l: u64) -> Result<()> {
        Err(not_ready())
    }
}
