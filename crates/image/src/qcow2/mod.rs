//! qcow2 images: versions 2 and 3, every cluster size and refcount width,
//! extended L2 entries, compressed clusters, internal snapshots.
//!
//! Concurrency: metadata (L1, L2 cache, refcounts, header) lives in
//! [`Meta`] behind a mutex that is held only while translating or updating
//! metadata; reads and in-place writes of allocated clusters do their data
//! I/O without it. A read-write "gate" lets operations that restructure the
//! image (discard, snapshots, resize, check) exclude in-flight I/O.
//!
//! Crash safety: metadata is written through as it changes, in the order
//! QEMU keeps: a new cluster's refcount before any reference to it, data
//! before the L2 entry that points at it, a new L2 table before the L1 entry,
//! and a reference removed before the refcount drops. A crash (the process
//! killed at any instant) therefore leaves at worst leaked clusters.
//! `flush` adds the fsync that makes it durable against power loss.

mod alloc;
mod cache;
mod check;
pub(crate) mod compress;
mod create;
pub(crate) mod header;
mod map;
mod refcount;
mod snapshot;
mod switch;
mod zero;

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock};

use crate::io::{io_err, pread_zero_fill, pwrite_all, sync_data};
use crate::{
    BlockBackend, CompressionType, Error, Format, Image, LayerStatus, OpenOptions, Qcow2Info,
    Result, SnapshotInfo,
};
use alloc::AllocPlan;
use cache::Cache;
pub(crate) use create::create;
pub(crate) use header::MAGIC;
use header::*;
use map::unit_bits;
use snapshot::Snapshot;

pub(crate) const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub(crate) const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub(crate) const OFLAG_COPIED: u64 = 1 << 63;
pub(crate) const OFLAG_COMPRESSED: u64 = 1 << 62;
pub(crate) const OFLAG_ZERO: u64 = 1;
/// Subcluster bitmap: low half "allocated", high half "reads as zeros".
pub(crate) const BM_ALL_ALLOC: u64 = 0xffff_ffff;
pub(crate) const BM_ALL_ZERO: u64 = 0xffff_ffff << 32;

/// Default L2 cache: enough tables to map this much virtual disk (bounded by
/// [`crate::DEFAULT_MAX_L2_CACHE`]).
const DEFAULT_L2_COVERAGE: u64 = 8 << 30;

/// Immutable geometry derived from the header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    /// log2 of the cluster size.
    pub cb: u32,
    pub cs: u64,
    /// log2 of the L2 entries per table.
    pub l2_bits: u32,
    pub ext: bool,
    /// log2 of the allocation unit: the subcluster size with extended L2,
    /// the cluster size otherwise.
    pub ub: u32,
    /// log2 of the refcount width in bits.
    pub rc_order: u32,
    /// log2 of the refcounts per refcount block.
    pub rpb_bits: u32,
    pub v3: bool,
    pub csize_shift: u32,
    pub csize_mask: u64,
}

impl Geo {
    fn new(h: &Header) -> Geo {
        let cb = h.cluster_bits;
        let ext = h.extended_l2();
        Geo {
            cb,
            cs: 1 << cb,
            l2_bits: cb - if ext { 4 } else { 3 },
            ext,
            ub: if ext { cb - 5 } else { cb },
            rc_order: h.refcount_order,
            rpb_bits: cb + 3 - h.refcount_order,
            v3: h.version >= 3,
            csize_shift: 62 - (cb - 8),
            csize_mask: (1 << (cb - 8)) - 1,
        }
    }

    /// u64 words per L2 entry in the cached tables.
    pub fn step(&self) -> usize {
        if self.ext {
            2
        } else {
            1
        }
    }

    pub fn l2_entries(&self) -> u64 {
        1 << self.l2_bits
    }

    pub fn max_refcount(&self) -> u64 {
        if self.rc_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << self.rc_order)) - 1
        }
    }

    /// Host byte range of a compressed cluster's data.
    pub fn compressed_range(&self, e: u64) -> (u64, u64) {
        let off = e & ((1u64 << self.csize_shift) - 1);
        let sectors = ((e >> self.csize_shift) & self.csize_mask) + 1;
        let len = sectors * 512 - (off & 511);
        (off, len)
    }
}

/// How one allocation unit (cluster or subcluster) reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Data at this host offset.
    Data(u64),
    Zero,
    /// Read from the backing file.
    Unalloc,
    /// Compressed cluster (the L2 entry).
    Compressed(u64),
}

/// Mutable metadata, behind [`Qcow2::meta`].
pub(crate) struct Meta {
    pub file: File,
    pub path: String,
    pub g: Geo,
    pub h: Header,
    pub l1: Vec<u64>,
    pub rt: Vec<u64>,
    pub l2c: Cache<Vec<u64>>,
    pub rbc: Cache<Vec<u8>>,
    pub snapshots: Vec<Snapshot>,
    /// Lowest cluster index that may be free.
    pub free_hint: u64,
    /// Known length of the file (grows with our writes).
    pub file_end: u64,
    /// Next free byte for packing compressed clusters (0: none).
    pub ctail: u64,
    pub read_only: bool,
    /// Whether we set the dirty bit (lazy refcounts) and must clear it.
    pub dirty_marked: bool,
    /// Bumped whenever a cluster is freed, so that the decompressed-cluster
    /// cache never serves data of a reused location.
    pub free_gen: u64,
    /// Guest cluster index ranges `[start, end)` being allocated by
    /// [`Qcow2::write_at`] while it writes their data without the lock;
    /// other writers of those clusters wait on [`Qcow2::alloc_done`].
    pub inflight: Vec<(u64, u64)>,
    /// Writers waiting on [`Qcow2::alloc_done`].
    pub alloc_waiters: usize,
}

pub(crate) struct Qcow2 {
    file: File,
    /// QEMU-compatible locks on `file`, released after `Drop` has flushed.
    _locks: crate::lock::HeldLocks,
    path: String,
    g: Geo,
    read_only: bool,
    marked_corrupt: bool,
    compression: CompressionType,
    size: AtomicU64,
    backing: Option<Box<Image>>,
    backing_name: Option<String>,
    backing_format: Option<Format>,
    meta: Mutex<Meta>,
    /// Signalled when an in-flight allocation ([`Meta::inflight`]) ends.
    alloc_done: Condvar,
    /// Shared by reads and writes, taken exclusively by operations that
    /// free clusters or restructure the image.
    gate: RwLock<()>,
    /// Last decompressed cluster (L2 entry, free generation, data), for
    /// small reads of compressed images.
    zcache: Mutex<(u64, u64, Vec<u8>)>,
}

pub(crate) fn be64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_be_bytes(a)
}

impl Meta {
    pub fn corrupt(&self, what: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    pub fn pread(&self, buf: &mut [u8], off: u64) -> Result<()> {
        pread_zero_fill(&self.file, &self.path, buf, off)
    }

    pub fn pwrite(&mut self, buf: &[u8], off: u64) -> Result<()> {
        pwrite_all(&self.file, &self.path, buf, off)?;
        self.file_end = self.file_end.max(off + buf.len() as u64);
        Ok(())
    }

    /// Checks that a metadata cluster offset read from the image is usable.
    pub fn check_meta_offset(&self, what: &str, off: u64) -> Result<()> {
        if !off.is_multiple_of(self.g.cs) {
            return Err(self.corrupt(format!("{what} offset {off:#x} is not cluster aligned")));
        }
        if off == 0 {
            return Err(self.corrupt(format!("{what} overlaps the header")));
        }
        if off + self.g.cs > self.file_end.div_ceil(self.g.cs) * self.g.cs {
            return Err(self.corrupt(format!(
                "{what} at {off:#x} lies beyond the end of the file"
            )));
        }
        Ok(())
    }

    /// Reads a table of big-endian u64 (L1, L2, refcount table).
    pub fn read_u64_table(&self, off: u64, n: usize) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; n * 8];
        self.pread(&mut raw, off)?;
        Ok(raw.chunks_exact(8).map(|c| be64_at(c, 0)).collect())
    }

    pub fn write_u64_table(&mut self, off: u64, t: &[u64], pad_to: usize) -> Result<()> {
        let mut raw = Vec::with_capacity(pad_to.max(t.len() * 8));
        for v in t {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        raw.resize(pad_to.max(raw.len()), 0);
        self.pwrite(&raw, off)
    }

    /// Refuses data writes that would land on the header or the active
    /// tables (QEMU's overlap check, reduced to the cheap cases).
    fn check_data_write(&self, host: u64) -> Result<()> {
        let cs = self.g.cs;
        let in_range =
            |start: u64, bytes: u64| host >= start && host < start + bytes.div_ceil(cs) * cs;
        if host < cs
            || in_range(self.h.l1_table_offset, self.l1.len() as u64 * 8)
            || in_range(
                self.h.refcount_table_offset,
                self.h.refcount_table_clusters as u64 * cs,
            )
        {
            return Err(self.corrupt(format!(
                "data cluster at {host:#x} overlaps the image's metadata"
            )));
        }
        Ok(())
    }

    /// The L2 table mapping `off`, allocated or copied (if shared with a
    /// snapshot) so that it may be modified. Returns its offset and the
    /// entry index.
    fn l2_for_write(&mut self, off: u64) -> Result<(u64, usize)> {
        let g = self.g;
        let l1i = (off >> (g.cb + g.l2_bits)) as usize;
        let idx = ((off >> g.cb) & (g.l2_entries() - 1)) as usize;
        if l1i >= self.l1.len() {
            return Err(self.corrupt(format!("offset {off:#x} beyond the L1 table")));
        }
        let l1e = self.l1[l1i];
        let old = l1e & L1E_OFFSET_MASK;
        if old != 0 && l1e & OFLAG_COPIED != 0 {
            return Ok((old, idx));
        }
        let new = self.alloc_clusters(1)?;
        let table = if old == 0 {
            vec![0u64; g.l2_entries() as usize * g.step()]
        } else {
            self.l2_table(old)?.clone()
        };
        self.write_u64_table(new, &table, g.cs as usize)?;
        self.l2c.insert(new, table);
        self.l1[l1i] = new | OFLAG_COPIED;
        self.write_l1_entry(l1i)?;
        if old != 0 {
            self.decref(old >> g.cb, 1)?;
        }
        Ok((new, idx))
    }

    /// Sets the dirty bit before the first metadata change of an image with
    /// lazy refcounts, as QEMU does (it is cleared on a clean close).
    fn mark_dirty(&mut self) -> Result<()> {
        if self.dirty_marked || self.h.compatible & COMPAT_LAZY_REFCOUNTS == 0 {
            return Ok(());
        }
        self.h.incompatible |= INCOMPAT_DIRTY;
        let v = self.h.incompatible;
        self.pwrite(&v.to_be_bytes(), OFF_INCOMPAT)?;
        sync_data(&self.file, &self.path)?;
        self.dirty_marked = true;
        Ok(())
    }

    fn clear_dirty(&mut self) -> Result<()> {
        self.h.incompatible &= !INCOMPAT_DIRTY;
        let v = self.h.incompatible;
        sync_data(&self.file, &self.path)?;
        self.pwrite(&v.to_be_bytes(), OFF_INCOMPAT)?;
        sync_data(&self.file, &self.path)?;
        self.dirty_marked = false;
        Ok(())
    }

    /// Rewrites cluster 0 (header, extensions, backing name).
    pub fn write_header(&mut self) -> Result<()> {
        let mut h = self.h.clone();
        let b = h.serialize()?;
        self.h = h;
        self.pwrite(&b, 0)
    }
}

/// Reads `buf` at guest `off` from the backing image (zeros past its end
/// or without one).
fn read_backing(backing: Option<&Image>, buf: &mut [u8], off: u64) -> Result<()> {
    match backing {
        None => {
            buf.fill(0);
            Ok(())
        }
        Some(b) => {
            let blen = b.len();
            if off >= blen {
                buf.fill(0);
                return Ok(());
            }
            let n = ((blen - off) as usize).min(buf.len());
            b.read_at(&mut buf[..n], off)?;
            buf[n..].fill(0);
            Ok(())
        }
    }
}

impl Qcow2 {
    pub(crate) fn open(
        path: &Path,
        name: &str,
        read_only: bool,
        opts: &OpenOptions,
        req: crate::lock::Request,
    ) -> Result<Qcow2> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| io_err(name, e))?;
        // Lock before reading the header, as QEMU attaches the file with its
        // permissions before qcow2 reads it. They are released when `locks`
        // drops (with this Qcow2, after its Drop has flushed).
        let (perm, shared) = req.for_file(Format::Qcow2, !read_only);
        let locks = crate::lock::lock(&file, name, perm, shared)?;
        let file_len = file.metadata().map_err(|e| io_err(name, e))?.len();
        // The header, its extensions and the backing name live in cluster 0;
        // read the largest possible cluster, bounded by the file.
        let mut buf = vec![0u8; (1usize << MAX_CLUSTER_BITS).min(file_len as usize)];
        pread_zero_fill(&file, name, &mut buf, 0)?;
        let first = Header::parse(name, &buf[..buf.len().min(1 << 16)], file_len);
        let h = match first {
            Ok(h) => h,
            Err(_)
                if buf.len() >= 24
                    && u32::from_be_bytes([buf[20], buf[21], buf[22], buf[23]])
                        <= MAX_CLUSTER_BITS =>
            {
                let cb =
                    u32::from_be_bytes([buf[20], buf[21], buf[22], buf[23]]).max(MIN_CLUSTER_BITS);
                Header::parse(name, &buf[..buf.len().min(1 << cb)], file_len)?
            }
            Err(e) => return Err(e),
        };
        drop(buf);
        let g = Geo::new(&h);
        let marked_corrupt = h.incompatible & INCOMPAT_CORRUPT != 0;
        let effective_ro = read_only || (marked_corrupt && !opts.for_check);
        let meta_file = file.try_clone().map_err(|e| io_err(name, e))?;
        let l1 = {
            let mut raw = vec![0u8; h.l1_size as usize * 8];
            pread_zero_fill(&file, name, &mut raw, h.l1_table_offset)?;
            raw.chunks_exact(8)
                .map(|c| be64_at(c, 0))
                .collect::<Vec<_>>()
        };
        let rt = {
            let n = (h.refcount_table_clusters as u64 * g.cs / 8) as usize;
            let mut raw = vec![0u8; n * 8];
            pread_zero_fill(&file, name, &mut raw, h.refcount_table_offset)?;
            raw.chunks_exact(8)
                .map(|c| be64_at(c, 0))
                .collect::<Vec<_>>()
        };
        let l2_bytes = opts.l2_cache_size.unwrap_or_else(|| {
            let tables = DEFAULT_L2_COVERAGE
                .min(h.size.max(1))
                .div_ceil(1 << (g.cb + g.l2_bits));
            ((tables * g.cs) as usize).min(crate::DEFAULT_MAX_L2_CACHE)
        });
        let l2_cap = (l2_bytes as u64 / g.cs).max(2) as usize;
        let rc_bytes = opts
            .refcount_cache_size
            .unwrap_or((l2_bytes / 4).max(4 * g.cs as usize));
        let rc_cap = (rc_bytes as u64 / g.cs).max(2) as usize;
        let backing_name = h.backing_file.clone();
        let backing_format = h.backing_format;
        let mut meta = Meta {
            file: meta_file,
            path: name.to_string(),
            g,
            h,
            l1,
            rt,
            l2c: Cache::new(l2_cap),
            rbc: Cache::new(rc_cap),
            snapshots: Vec::new(),
            free_hint: 0,
            file_end: file_len,
            ctail: 0,
            read_only: effective_ro,
            dirty_marked: false,
            free_gen: 0,
            inflight: Vec::new(),
            alloc_waiters: 0,
        };
        meta.snapshots = meta.read_snapshots()?;
        if !effective_ro && meta.h.autoclear != 0 {
            // Autoclear features (bitmaps) describe data we do not keep in
            // sync: clear them so that nobody trusts stale bitmaps.
            meta.h.autoclear = 0;
            meta.pwrite(&0u64.to_be_bytes(), OFF_AUTOCLEAR)?;
        }
        let q = Qcow2 {
            file,
            _locks: locks,
            path: name.to_string(),
            g,
            read_only: effective_ro,
            marked_corrupt,
            compression: meta.h.compression,
            size: AtomicU64::new(meta.h.size),
            backing: None,
            backing_name,
            backing_format,
            meta: Mutex::new(meta),
            alloc_done: Condvar::new(),
            gate: RwLock::new(()),
            zcache: Mutex::new((0, 0, Vec::new())),
        };
        {
            let mut m = q.lock();
            if m.h.incompatible & INCOMPAT_DIRTY != 0 && !effective_ro && !opts.for_check {
                // Opened dirty: refcounts may lag behind (lazy refcounts or
                // a crash); rebuild them before anything else.
                m.check_and_repair(crate::Repair::All)?;
                m.clear_dirty()?;
            }
        }
        Ok(q)
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gate_shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    fn gate_exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn backing_name(&self) -> Option<&str> {
        self.backing_name.as_deref()
    }

    pub(crate) fn backing_format(&self) -> Option<Format> {
        self.backing_format
    }

    pub(crate) fn attach_backing(&mut self, b: Box<Image>) {
        self.backing = Some(b);
    }

    pub(crate) fn backing(&self) -> Option<&Image> {
        self.backing.as_deref()
    }

    pub(crate) fn cluster_size(&self) -> u64 {
        self.g.cs
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.lock().h.incompatible & INCOMPAT_DIRTY != 0
    }

    pub(crate) fn qcow2_info(&self) -> Qcow2Info {
        let m = self.lock();
        Qcow2Info {
            compat: if m.g.v3 { "1.1" } else { "0.10" }.to_string(),
            compression_type: m.h.compression.name().to_string(),
            lazy_refcounts: m.h.compatible & COMPAT_LAZY_REFCOUNTS != 0,
            refcount_bits: 1 << m.h.refcount_order,
            corrupt: m.h.incompatible & INCOMPAT_CORRUPT != 0,
            extended_l2: m.g.ext,
            data_file: None,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn writable(&self) -> Result<()> {
        if self.marked_corrupt && self.read_only {
            return Err(Error::MarkedCorrupt {
                path: self.path.clone(),
            });
        }
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let _g = self.gate_shared();
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let want = (buf.len() - pos) as u64;
            let (unit, len, gen) = {
                let mut m = self.lock();
                let (u, l) = m.map_extent(off, want)?;
                (u, l, m.free_gen)
            };
            let len = len as usize;
            let chunk = &mut buf[pos..pos + len];
            match unit {
                Unit::Data(h) => pread_zero_fill(&self.file, &self.path, chunk, h)?,
                Unit::Zero => chunk.fill(0),
                Unit::Unalloc => read_backing(self.backing(), chunk, off)?,
                Unit::Compressed(e) => {
                    let in_cluster = (off & (self.g.cs - 1)) as usize;
                    self.with_decompressed(e, gen, |data| {
                        chunk.copy_from_slice(&data[in_cluster..in_cluster + len])
                    })?;
                }
            }
            pos += len;
        }
        Ok(())
    }

    /// Runs `f` on the decompressed contents of the compressed cluster `e`.
    fn with_decompressed(&self, e: u64, gen: u64, f: impl FnOnce(&[u8])) -> Result<()> {
        let mut z = self.zcache.lock().unwrap_or_else(|e| e.into_inner());
        if z.0 != e || z.1 != gen || z.2.is_empty() {
            let data = self.decompress_entry(e)?;
            *z = (e, gen, data);
        }
        f(&z.2);
        Ok(())
    }

    fn decompress_entry(&self, e: u64) -> Result<Vec<u8>> {
        let (off, len) = self.g.compressed_range(e);
        let mut src = vec![0u8; len as usize];
        pread_zero_fill(&self.file, &self.path, &mut src, off)?;
        let mut out = vec![0u8; self.g.cs as usize];
        compress::decompress(self.compression, &src, &mut out).map_err(|source| {
            Error::BadCompressed {
                path: self.path.clone(),
                offset: off,
                source,
            }
        })?;
        Ok(out)
    }

    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.writable()?;
        let _g = self.gate_shared();
        let cs = self.g.cs;
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let want = (buf.len() - pos) as u64;
            let mut m = self.lock();
            if let Some((host, len)) = m.map_in_place(off, want)? {
                drop(m);
                let len = len as usize;
                pwrite_all(&self.file, &self.path, &buf[pos..pos + len], host)?;
                pos += len;
                continue;
            }
            if m.is_inflight(off >> self.g.cb) {
                // Another writer is allocating this cluster: once it has
                // linked it, this write goes in place.
                m.alloc_waiters += 1;
                let mut m = self.alloc_done.wait(m).unwrap_or_else(|e| e.into_inner());
                m.alloc_waiters -= 1;
                drop(m);
                continue;
            }
            m.mark_dirty()?;
            if let Some(plan) = m.plan_alloc(self, off, want)? {
                let data = &buf[pos..pos + plan.len];
                if plan.cheap() {
                    // A few KiB into fresh zero clusters: dropping and
                    // retaking the lock would cost more than the write.
                    let r = self
                        .write_planned(&plan, data)
                        .and_then(|()| m.link_alloc(&plan));
                    if r.is_err() {
                        let _ = m.decref(plan.host >> self.g.cb, plan.n as u64);
                    }
                    let first = off >> self.g.cb;
                    m.inflight.retain(|&(s, _)| s != first);
                    r?;
                    pos += plan.len;
                    continue;
                }
                drop(m);
                let written = self.write_planned(&plan, data);
                let mut m = self.lock();
                let r = match written {
                    Ok(()) => m.link_alloc(&plan),
                    Err(e) => {
                        // Never linked: give the clusters back (if that
                        // fails too, they only leak).
                        let _ = m.decref(plan.host >> self.g.cb, plan.n as u64);
                        Err(e)
                    }
                };
                let first = off >> self.g.cb;
                m.inflight.retain(|&(s, _)| s != first);
                // Waking is a system call: only when someone waits.
                let wake = m.alloc_waiters > 0;
                drop(m);
                if wake {
                    self.alloc_done.notify_all();
                }
                r?;
                pos += plan.len;
                continue;
            }
            let len = (cs - (off & (cs - 1))).min(want) as usize;
            m.write_cluster_n(self, off, Some(&buf[pos..pos + len]), len)?;
            pos += len;
        }
        Ok(())
    }

    /// Writes the data of an allocation planned by [`Meta::plan_alloc`],
    /// without the metadata lock: whole clusters straight from `data`,
    /// partial ones merged with what lies below them (read in one go).
    fn write_planned(&self, p: &AllocPlan, data: &[u8]) -> Result<()> {
        let cs = self.g.cs as usize;
        let c0 = p.off & !(self.g.cs - 1);
        let a = (p.off - c0) as usize;
        let end = a + p.len; // relative to c0
        let n = p.n;
        // Partial first and last clusters.
        let head_partial = a != 0 || end < cs;
        let tail_partial = n > 1 && !end.is_multiple_of(cs);
        let partial = |k: usize, lo: usize, hi: usize, zero: bool| -> Result<()> {
            // Cluster k of the plan; [lo, hi) written within it.
            let host = p.host + (k * cs) as u64;
            let src = &data[(k * cs + lo) - a..(k * cs + hi) - a];
            if zero && p.fresh {
                // Past the end of the file the rest already reads as zeros.
                return pwrite_all(&self.file, &self.path, src, host + lo as u64);
            }
            let mut cbuf = vec![0u8; cs];
            if !zero {
                read_backing(self.backing(), &mut cbuf, c0 + (k * cs) as u64)?;
            }
            cbuf[lo..hi].copy_from_slice(src);
            pwrite_all(&self.file, &self.path, &cbuf, host)
        };
        let mut full_lo = 0;
        let mut full_hi = n;
        if head_partial {
            partial(0, a, end.min(cs), p.head_zero)?;
            full_lo = 1;
        }
        if tail_partial {
            partial(n - 1, 0, end - (n - 1) * cs, p.tail_zero)?;
            full_hi = n - 1;
        }
        if full_hi > full_lo {
            let src = &data[full_lo * cs - a..full_hi * cs - a];
            pwrite_all(&self.file, &self.path, src, p.host + (full_lo * cs) as u64)?;
        }
        Ok(())
    }

    pub(crate) fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        sync_data(&self.file, &self.path)
    }

    pub(crate) fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.writable()?;
        let _g = self.gate_exclusive();
        let mut m = self.lock();
        m.mark_dirty()?;
        m.zero_range(self, offset, len, ZeroMode::Zero { unmap: may_unmap })
    }

    pub(crate) fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        let _g = self.gate_exclusive();
        let mut m = self.lock();
        m.mark_dirty()?;
        m.zero_range(self, offset, len, ZeroMode::Zero { unmap: true })
    }

    pub(crate) fn make_empty(&self) -> Result<()> {
        self.writable()?;
        let _g = self.gate_exclusive();
        let mut m = self.lock();
        m.mark_dirty()?;
        let size = self.len();
        m.zero_range(self, 0, size, ZeroMode::Empty)
    }

    pub(crate) fn layer_status(&self, offset: u64, max_len: u64) -> Result<LayerStatus> {
        let _g = self.gate_shared();
        let (unit, len) = self.lock().map_extent(offset, max_len)?;
        let (allocated, zero, data, compressed, off) = match unit {
            Unit::Data(h) => (true, false, true, false, Some(h)),
            Unit::Zero => (true, true, false, false, None),
            Unit::Compressed(_) => (true, false, true, true, None),
            Unit::Unalloc => (false, self.backing.is_none(), false, false, None),
        };
        // Past the end of a shorter backing file, unallocated reads as zeros.
        let zero = zero || (!allocated && self.backing.as_ref().is_some_and(|b| offset >= b.len()));
        Ok(LayerStatus {
            len,
            allocated,
            zero,
            data,
            compressed,
            offset: off,
        })
    }

    pub(crate) fn write_compressed(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.writable()?;
        let cs = self.g.cs;
        if !offset.is_multiple_of(cs)
            || buf.len() as u64 > cs
            || (buf.len() as u64) < cs && offset + buf.len() as u64 != self.len()
        {
            return Err(Error::NotPossible(format!(
                "compressed writes must cover one whole cluster ({cs} bytes) at an aligned offset (got {} bytes at {offset:#x})",
                buf.len()
            )));
        }
        let _g = self.gate_exclusive();
        let mut m = self.lock();
        m.mark_dirty()?;
        m.write_compressed(self, buf, offset)
    }

    pub(crate) fn set_backing(&self, name: Option<&str>, format: Option<Format>) -> Result<()> {
        self.writable()?;
        if let Some(n) = name {
            if n.len() as u32 > MAX_BACKING_NAME {
                return Err(Error::InvalidOption(format!(
                    "backing file name longer than {MAX_BACKING_NAME} bytes"
                )));
            }
        }
        let _g = self.gate_exclusive();
        let mut m = self.lock();
        let old = m.h.clone();
        m.h.backing_file = name.filter(|n| !n.is_empty()).map(str::to_string);
        m.h.backing_format = if m.h.backing_file.is_some() {
            format
        } else {
            None
        };
        m.h.backing_format_raw = None;
        if let Err(e) = m.write_header() {
            m.h = old;
            return Err(e);
        }
        sync_data(&m.file, &self.path)
    }

    pub(crate) fn resize(&self, new_size: u64) -> Result<()> {
        self.writable()?;
        let _g = self.gate_exclusive();
        let mut m = self.lock();
        m.mark_dirty()?;
        m.resize(self, new_size)?;
        self.size.store(new_size, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.lock().snapshots.iter().map(Snapshot::info).collect()
    }

    pub(crate) fn snapshot_create(&self, name: &str) -> Result<()> {
        self.writable()?;
        let _g = self.gate_exclusive();
        let mut m = self.lock();
        m.mark_dirty()?;
        let size = self.len();
        m.snapshot_create(name, size)
    }

    pub(crate) fn snapshot_apply(&self, id_or_name: &str) -> Result<()> {
        self.writable()?;
        let _g = self.gate_exclusive();
        let mut m = self.lock();
        m.mark_dirty()?;
        let size = m.snapshot_apply(id_or_name)?;
        self.size.store(size, Ordering::Relaxed);
        *self.zcache.lock().unwrap_or_else(|e| e.into_inner()) = (0, 0, Vec::new());
        Ok(())
    }

    pub(crate) fn snapshot_delete(&self, id_or_name: &str) -> Result<()> {
        self.writable()?;
        let _g = self.gate_exclusive();
        let mut m = self.lock();
        m.mark_dirty()?;
        m.snapshot_delete(id_or_name)
    }

    pub(crate) fn check(&self, repair: crate::Repair) -> Result<crate::CheckReport> {
        if repair != crate::Repair::None && self.read_only {
            return Err(Error::ReadOnly);
        }
        let _g = self.gate_exclusive();
        let mut m = self.lock();
        let r = m.check_and_repair(repair)?;
        if repair == crate::Repair::All
            && r.corruptions == r.corruptions_fixed
            && m.h.incompatible & (INCOMPAT_CORRUPT | INCOMPAT_DIRTY) != 0
        {
            m.h.incompatible &= !INCOMPAT_CORRUPT;
            m.clear_dirty()?;
        }
        Ok(r)
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        let m = self.meta.get_mut().unwrap_or_else(|e| e.into_inner());
        // Like QEMU's close: make everything durable.
        let _ = m.file.sync_data();
        if m.dirty_marked {
            // Clean close: everything is on disk, the refcounts are exact.
            let _ = m.clear_dirty();
        }
    }
}

/// What [`Meta::zero_range`] leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroMode {
    /// Reads as zeros; `unmap` may release the host clusters.
    Zero { unmap: bool },
    /// Reads from the backing file again (commit's emptying).
    Empty,
}

impl Meta {
    /// Writes one compressed cluster (or a normal one if it does not shrink).
    fn write_compressed(&mut self, q: &Qcow2, buf: &[u8], off: u64) -> Result<()> {
        let g = self.g;
        let cs = g.cs as usize;
        let padded;
        let data: &[u8] = if buf.len() < cs {
            let mut p = vec![0u8; cs];
            p[..buf.len()].copy_from_slice(buf);
            padded = p;
            &padded
        } else {
            buf
        };
        let out = compress::compress(self.h.compression, data, cs - 1);
        let out = match out {
            Some(o) => o,
            None => return self.write_cluster_n(q, off, Some(data), cs),
        };
        let (l2off, idx) = self.l2_for_write(off)?;
        let (old, _) = self.l2_get(l2off, idx)?;
        let coff = self.alloc_bytes(out.len() as u64)?;
        self.pwrite(&out, coff)?;
        let nsect = ((coff + out.len() as u64 - 1) >> 9) - (coff >> 9);
        let e = OFLAG_COMPRESSED | (nsect << g.csize_shift) | coff;
        self.l2_set(l2off, idx, e, 0)?;
        if old & OFLAG_COMPRESSED != 0 {
            self.free_compressed(old)?;
        } else if old & L2E_OFFSET_MASK != 0 {
            self.decref((old & L2E_OFFSET_MASK) >> g.cb, 1)?;
        }
        Ok(())
    }

    /// Changes the virtual size: grows the L1 table as needed, or discards
    /// everything past a smaller size.
    fn resize(&mut self, q: &Qcow2, new_size: u64) -> Result<()> {
        let g = self.g;
        if !new_size.is_multiple_of(512) {
            return Err(Error::InvalidOption(format!(
                "the new size must be a multiple of 512 (got {new_size})"
            )));
        }
        if new_size > MAX_VIRTUAL_SIZE {
            return Err(Error::TooLarge {
                what: "virtual size",
                value: new_size,
                limit: MAX_VIRTUAL_SIZE,
            });
        }
        let old_size = self.h.size;
        if new_size < old_size {
            if !self.snapshots.is_empty() {
                return Err(Error::NotPossible(
                    "cannot shrink an image that has internal snapshots".into(),
                ));
            }
            // Zero the tail of the last partial cluster, release the rest.
            let aligned = new_size.div_ceil(g.cs) * g.cs;
            if aligned > new_size {
                let len = aligned.min(old_size) - new_size;
                self.zero_range(q, new_size, len, ZeroMode::Zero { unmap: true })?;
            }
            if old_size > aligned {
                self.zero_range(q, aligned, old_size - aligned, ZeroMode::Empty)?;
            }
            // Free L2 tables that now map nothing.
            let keep = l1_entries_for(new_size, g.cb, g.ext) as usize;
            for i in keep..self.l1.len() {
                let l2 = self.l1[i] & L1E_OFFSET_MASK;
                if l2 != 0 {
                    self.l1[i] = 0;
                    self.write_l1_entry(i)?;
                    self.decref(l2 >> g.cb, 1)?;
                }
            }
        } else {
            let need = l1_entries_for(new_size, g.cb, g.ext);
            self.grow_l1(need)?;
        }
        self.h.size = new_size;
        sync_data(&self.file, &self.path)?;
        self.pwrite(&new_size.to_be_bytes(), OFF_SIZE)?;
        Ok(())
    }

    /// Makes the active L1 table hold at least `need` entries, moving it to
    /// new clusters when it grows.
    pub fn grow_l1(&mut self, need: u64) -> Result<()> {
        let g = self.g;
        if need <= self.l1.len() as u64 {
            return Ok(());
        }
        if need * 8 > MAX_L1_BYTES {
            return Err(Error::TooLarge {
                what: "L1 table",
                value: need * 8,
                limit: MAX_L1_BYTES,
            });
        }
        // Grow by half again like QEMU, within the cap.
        let mut n = need.max(self.l1.len() as u64 * 3 / 2).min(MAX_L1_BYTES / 8);
        n = (n * 8).div_ceil(g.cs) * g.cs / 8;
        let n = n.min(MAX_L1_BYTES / 8);
        let clusters = (n * 8).div_ceil(g.cs);
        let new_off = self.alloc_clusters(clusters)?;
        let mut new_l1 = self.l1.clone();
        new_l1.resize(n as usize, 0);
        self.write_u64_table(new_off, &new_l1, (clusters * g.cs) as usize)?;
        sync_data(&self.file, &self.path)?;
        let old_off = self.h.l1_table_offset;
        let old_clusters = (self.l1.len() as u64 * 8).div_ceil(g.cs);
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&(n as u32).to_be_bytes());
        hdr[4..].copy_from_slice(&new_off.to_be_bytes());
        self.pwrite(&hdr, OFF_L1_SIZE)?;
        self.h.l1_size = n as u32;
        self.h.l1_table_offset = new_off;
        self.l1 = new_l1;
        if old_off != 0 && old_clusters > 0 {
            self.decref(old_off >> g.cb, old_clusters)?;
        }
        Ok(())
    }
}
