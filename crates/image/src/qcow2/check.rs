//! `check`: recount every reference in the image, compare with the stored
//! refcounts and COPIED flags, repair what is allowed.
//!
//! The walk follows qemu-img 7.2 (`qcow2_check_refcounts` and its helpers in
//! QEMU's block/qcow2-refcount.c) so that both tools call the same images
//! corrupt: tables are read as raw bytes wherever the header or an entry
//! points (past the end of the file they read as zeros), reserved bits and
//! misplaced flags are corruptions, and stored refcounts are read the way
//! QEMU reads them. A broken refcount structure is rebuilt with `-r all`.

use std::collections::BTreeMap;

use super::switch::Target;
use super::{
    Meta, BM_ALL_ALLOC, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED,
    OFLAG_ZERO,
};
use crate::io::sync_data;
use crate::{CheckReport, Error, Repair, Result};

/// Most host clusters `check` accounts for (4 bytes each): 1 GiB of
/// counters. Larger files are refused rather than exhausting memory.
const MAX_CHECK_CLUSTERS: u64 = 1 << 28;

/// Bits of an L1 entry that must be zero (QEMU's L1E_RESERVED_MASK).
const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// Bits of a standard (not compressed) L2 entry that must be zero.
const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// Bits of a refcount table entry that must be zero; the offset is all the
/// rest, high byte included (QEMU's REFT_RESERVED_MASK, REFT_OFFSET_MASK).
const REFT_RESERVED_MASK: u64 = 0x1ff;
const REFT_OFFSET_MASK: u64 = !REFT_RESERVED_MASK;
/// Subcluster "reads as zeros" bits of an extended L2 bitmap.
const BM_ALL_ZERO: u64 = 0xffff_ffff_0000_0000;
/// Largest offset the block layer reads from (QEMU refuses requests past
/// about `i64::MAX`); a table there cannot be read.
const MAX_READ_END: u64 = i64::MAX as u64;

/// Why a check pass stopped early.
enum Stop {
    /// An internal error, already counted in `check_errors` (qemu-img stops
    /// the check and exits 1).
    Abort,
    /// A failure of our own I/O or limits.
    Fail(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Fail(e)
    }
}

type Step<T = ()> = std::result::Result<T, Stop>;

/// Which repairs a pass may do (QEMU's BdrvCheckMode bits).
#[derive(Clone, Copy)]
struct Fix {
    leaks: bool,
    errors: bool,
}

impl Fix {
    const NONE: Fix = Fix {
        leaks: false,
        errors: false,
    };
    fn of(r: Repair) -> Fix {
        Fix {
            leaks: r != Repair::None,
            errors: r == Repair::All,
        }
    }
    fn any(self) -> bool {
        self.leaks || self.errors
    }
}

/// Counts as QEMU keeps them: `corruptions` and `leaks` are what remains
/// unrepaired.
#[derive(Default, Clone)]
struct Res {
    corruptions: u64,
    leaks: u64,
    check_errors: u64,
    corruptions_fixed: u64,
    leaks_fixed: u64,
    allocated: u64,
    fragmented: u64,
    compressed: u64,
}

/// The in-memory refcount table: references counted from the metadata.
struct Imrt {
    refs: Vec<u32>,
    cb: u32,
    /// Largest refcount the image can store (capped to the counter width).
    max: u32,
}

impl Imrt {
    fn get(&self, c: u64) -> u64 {
        self.refs.get(c as usize).copied().unwrap_or(0) as u64
    }
}

/// Where the tree walk stands, shared by its helpers.
struct Walk {
    imrt: Imrt,
    /// Highest cluster with a stored or counted reference.
    highest: u64,
    res: Res,
    msgs: Vec<String>,
    rebuild: bool,
    /// Last refcount block read by [`Meta::qemu_refcount`].
    rb: Option<(u64, Vec<u8>)>,
}

impl Walk {
    fn msg(&mut self, m: String, times: u64) {
        if times > 1 {
            self.msgs.push(format!("{m} (x{times})"));
        } else {
            self.msgs.push(m);
        }
    }
}

/// What kind of cluster an L2 entry describes (QEMU's QCow2ClusterType).
#[derive(PartialEq, Eq)]
enum Kind {
    Compressed,
    ZeroPlain,
    ZeroAlloc,
    Normal,
    Unallocated,
}

fn kind(e: u64, ext: bool) -> Kind {
    if e & OFLAG_COMPRESSED != 0 {
        Kind::Compressed
    } else if e & OFLAG_ZERO != 0 && !ext {
        if e & L2E_OFFSET_MASK != 0 {
            Kind::ZeroAlloc
        } else {
            Kind::ZeroPlain
        }
    } else if e & L2E_OFFSET_MASK == 0 {
        Kind::Unallocated
    } else {
        Kind::Normal
    }
}

impl Meta {
    pub fn check_and_repair(&mut self, repair: Repair) -> Result<CheckReport> {
        let fix = Fix::of(repair);
        let mut w = self.new_walk()?;
        let out = match self.check_pass(&mut w, fix, repair == Repair::All) {
            Ok(()) | Err(Stop::Abort) => w,
            Err(Stop::Fail(e)) => return Err(e),
        };
        if repair != Repair::None {
            self.free_hint = 0;
            sync_data(&self.file, &self.path)?;
        }
        Ok(self.report(out))
    }

    fn new_walk(&self) -> Result<Walk> {
        let nclusters = self.file_end.div_ceil(self.g.cs);
        if nclusters > MAX_CHECK_CLUSTERS {
            return Err(Error::TooLarge {
                what: "image file (clusters to check)",
                value: nclusters,
                limit: MAX_CHECK_CLUSTERS,
            });
        }
        Ok(Walk {
            imrt: Imrt {
                refs: vec![0; nclusters as usize],
                cb: self.g.cb,
                max: self.g.max_refcount().min(u32::MAX as u64) as u32,
            },
            res: Res::default(),
            msgs: Vec::new(),
            rebuild: false,
            rb: None,
            highest: 0,
        })
    }

    /// The report in this crate's terms: found counts include the repaired.
    fn report(&self, w: Walk) -> CheckReport {
        CheckReport {
            corruptions: w.res.corruptions + w.res.corruptions_fixed,
            leaks: w.res.leaks + w.res.leaks_fixed,
            check_errors: w.res.check_errors,
            corruptions_fixed: w.res.corruptions_fixed,
            leaks_fixed: w.res.leaks_fixed,
            allocated_clusters: w.res.allocated,
            total_clusters: (self.h.size / 512 * 512).div_ceil(self.g.cs),
            fragmented_clusters: w.res.fragmented,
            compressed_clusters: w.res.compressed,
            image_end_offset: (w.highest + 1) * self.g.cs,
            messages: w.msgs,
        }
    }

    /// One `qcow2_check_refcounts` run: count, compare, repair.
    fn check_pass(&mut self, w: &mut Walk, fix: Fix, may_rebuild: bool) -> Step {
        let snap_problems = self.check_snapshot_table(w, fix)?;
        self.calculate(w, fix)?;
        let pre_compare = w.res.clone();
        let pre_msgs = w.msgs.len();
        self.compare(w, Fix::NONE)?;
        if (w.rebuild || snap_problems) && fix.errors && may_rebuild {
            return self.rebuild_and_recheck(w);
        }
        if fix.any() && !w.rebuild && (w.res.leaks != 0 || w.res.corruptions != 0) {
            // Compare again, repairing this time.
            w.res = pre_compare;
            w.msgs.truncate(pre_msgs);
            self.compare(w, fix)?;
        }
        self.check_copied(w, fix)
    }

    /// Rebuilds the whole refcount structure from the references (like
    /// `qemu-img check -r all` when the refcount table or its blocks are
    /// broken), then checks again; the result covers both passes.
    fn rebuild_and_recheck(&mut self, w: &mut Walk) -> Step {
        w.msgs.push("Rebuilding refcount structure".into());
        let target = Target {
            l1: self.l1.clone(),
            snapshots: self.snapshots.clone(),
            size: self.h.size,
        };
        self.switch_to(target, false)?;
        let before = w.res.clone();
        let mut w2 = self.new_walk()?;
        let r = self.check_pass(&mut w2, Fix::of(Repair::All), false);
        w.msgs.append(&mut w2.msgs);
        w.imrt = w2.imrt;
        let mut res = w2.res;
        // What the first pass found and the second no longer does was
        // fixed by the rebuild; the old structure's leaks went with it.
        res.corruptions_fixed += before.corruptions.saturating_sub(res.corruptions);
        res.leaks_fixed += before.leaks.saturating_sub(res.leaks);
        res.check_errors += before.check_errors;
        w.res = res;
        r
    }

    /// Reads `len` bytes at `off` as QEMU's block layer does: zeros past the
    /// end of the file, an error past what it can address.
    fn read_raw(&self, off: u64, len: usize) -> Step<Vec<u8>> {
        let mut b = vec![0u8; len];
        if off.checked_add(len as u64).is_none_or(|e| e > MAX_READ_END) {
            return Err(Stop::Abort);
        }
        if off < self.file_end {
            self.pread(&mut b, off)?;
        }
        Ok(b)
    }

    fn read_table(&self, off: u64, n: usize) -> Step<Vec<u64>> {
        let raw = self.read_raw(off, n * 8)?;
        Ok(raw.chunks_exact(8).map(|c| super::be64_at(c, 0)).collect())
    }

    /// The stored refcount of cluster `c`, read as QEMU reads it (so that
    /// an entry QEMU cannot follow is an error here too).
    fn qemu_refcount(&self, w: &mut Walk, c: u64) -> std::result::Result<u64, ()> {
        let g = self.g;
        let Some(&e) = self.rt.get((c >> g.rpb_bits) as usize) else {
            return Ok(0);
        };
        let off = e & REFT_OFFSET_MASK;
        if off == 0 {
            return Ok(0);
        }
        if !off.is_multiple_of(g.cs) || off > MAX_READ_END - g.cs {
            return Err(());
        }
        if w.rb.as_ref().is_none_or(|(o, _)| *o != off) {
            let b = self.read_raw(off, g.cs as usize).map_err(|_| ())?;
            w.rb = Some((off, b));
        }
        let block = &w.rb.as_ref().ok_or(())?.1;
        Ok(Meta::entry_of(
            g.rc_order,
            block,
            c & ((1 << g.rpb_bits) - 1),
        ))
    }

    /// Counts `times` references to every cluster overlapping
    /// `[off, off+size)` (QEMU's qcow2_inc_refcounts_imrt).
    fn inc(&self, w: &mut Walk, off: u64, size: u64, times: u64) {
        if size == 0 || times == 0 {
            return;
        }
        let cs = self.g.cs;
        // A region may end less than a cluster past the end of the file
        // (the last cluster may be partly written).
        if off as i128 + size as i128 - self.file_end as i128 >= cs as i128 {
            w.res.corruptions += times;
            w.msg(
                format!(
                    "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {off:#x} size {size:#x}"
                ),
                times,
            );
            return;
        }
        let cb = w.imrt.cb;
        for c in (off >> cb)..=((off + size - 1) >> cb) {
            let i = c as usize;
            if i >= w.imrt.refs.len() {
                // Bounded by the test above: at most one cluster past EOF.
                w.imrt.refs.resize(i + 1, 0);
            }
            let v = w.imrt.refs[i];
            let room = (w.imrt.max - v) as u64;
            if times > room {
                w.res.corruptions += times - room;
                w.msg(
                    format!("ERROR: overflow cluster offset={:#x}", c << cb),
                    times - room,
                );
                w.imrt.refs[i] = w.imrt.max;
            } else {
                w.imrt.refs[i] = v + times as u32;
            }
        }
    }

    /// Walks the snapshot table as QEMU's check reads it; returns whether
    /// `-r all` has to rewrite it.
    fn check_snapshot_table(&mut self, w: &mut Walk, fix: Fix) -> Step<bool> {
        let mut rewrite = false;
        if self.h.version >= 3 {
            for i in 0..self.snapshots.len() {
                if self.snapshot_extra_len(i)? < 16 {
                    w.res.corruptions += 1;
                    w.msgs.push(format!(
                        "{} snapshot table entry {i} is incomplete",
                        if fix.errors { "Repairing" } else { "ERROR" }
                    ));
                    rewrite = true;
                }
            }
        }
        Ok(rewrite)
    }

    /// Extra data length of snapshot table entry `i` as stored.
    fn snapshot_extra_len(&self, i: usize) -> Step<u32> {
        let (starts, _) = self.snapshot_table_layout()?;
        let b = self.read_raw(starts[i], 40)?;
        Ok(u32::from_be_bytes([b[36], b[37], b[38], b[39]]))
    }

    /// Entry offsets and total length of the stored snapshot table.
    fn snapshot_table_layout(&self) -> Step<(Vec<u64>, u64)> {
        let mut off = self.h.snapshots_offset;
        let mut starts = Vec::with_capacity(self.snapshots.len());
        for _ in 0..self.snapshots.len() {
            off = off.div_ceil(8) * 8;
            starts.push(off);
            let b = self.read_raw(off, 40)?;
            let id = u16::from_be_bytes([b[12], b[13]]) as u64;
            let name = u16::from_be_bytes([b[14], b[15]]) as u64;
            let extra = u32::from_be_bytes([b[36], b[37], b[38], b[39]]) as u64;
            off += 40 + extra + id + name;
        }
        Ok((starts, off - self.h.snapshots_offset))
    }

    /// Counts every reference in the image (QEMU's calculate_refcounts).
    fn calculate(&mut self, w: &mut Walk, fix: Fix) -> Step {
        let cs = self.g.cs;
        self.inc(w, 0, cs, 1);
        let (l1_off, l1_n) = (self.h.l1_table_offset, self.h.l1_size);
        self.check_l1(w, l1_off, l1_n, true, fix)?;
        for i in 0..self.snapshots.len() {
            let s = &self.snapshots[i];
            let (off, n, id, name) = (s.l1_offset, s.l1_size, s.id.clone(), s.name.clone());
            if !off.is_multiple_of(cs) {
                w.res.corruptions += 1;
                w.msgs.push(format!(
                    "ERROR snapshot {id} ({name}) l1_offset={off:#x}: L1 table is not cluster aligned; snapshot table entry corrupted"
                ));
                continue;
            }
            if n as u64 * 8 > super::header::MAX_L1_BYTES {
                w.res.corruptions += 1;
                w.msgs.push(format!(
                    "ERROR snapshot {id} ({name}) l1_size={n:#x}: L1 table is too large; snapshot table entry corrupted"
                ));
                continue;
            }
            self.check_l1(w, off, n, false, fix)?;
        }
        if !self.snapshots.is_empty() {
            let (_, len) = self.snapshot_table_layout()?;
            self.inc(w, self.h.snapshots_offset, len, 1);
        }
        let rt_bytes = self.rt.len() as u64 * 8;
        self.inc(w, self.h.refcount_table_offset, rt_bytes, 1);
        self.check_refblocks(w, fix);
        Ok(())
    }

    /// One L1 table and its L2 tables (QEMU's check_refcounts_l1). An L2
    /// table named by several entries is walked once and counted for each.
    fn check_l1(&mut self, w: &mut Walk, off: u64, n: u32, active: bool, fix: Fix) -> Step {
        if n == 0 {
            return Ok(());
        }
        self.inc(w, off, n as u64 * 8, 1);
        let l1 = match self.read_table(off, n as usize) {
            Ok(t) => t,
            Err(e) => {
                w.res.check_errors += 1;
                w.msgs.push("ERROR: I/O error in check_refcounts_l1".into());
                return Err(e);
            }
        };
        let mut tables: BTreeMap<u64, u64> = BTreeMap::new();
        for &e in &l1 {
            if e == 0 {
                continue;
            }
            if e & L1E_RESERVED_MASK != 0 {
                w.res.corruptions += 1;
                w.msgs.push(format!(
                    "ERROR found L1 entry with reserved bits set: {e:x}"
                ));
            }
            let l2 = e & L1E_OFFSET_MASK;
            if !l2.is_multiple_of(self.g.cs) {
                w.res.corruptions += 1;
                w.msgs.push(format!(
                    "ERROR l2_offset={l2:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
            }
            *tables.entry(l2).or_default() += 1;
        }
        for (l2, times) in tables {
            self.inc(w, l2, self.g.cs, times);
            self.check_l2(w, l2, times, active, fix)?;
        }
        Ok(())
    }

    /// One L2 table, counted `times` (QEMU's check_refcounts_l2).
    fn check_l2(&mut self, w: &mut Walk, l2: u64, times: u64, active: bool, fix: Fix) -> Step {
        let g = self.g;
        let cs = g.cs;
        let step = g.step();
        let mut t = match self.read_table(l2, g.l2_entries() as usize * step) {
            Ok(t) => t,
            Err(e) => {
                w.res.check_errors += 1;
                w.msgs.push("ERROR: I/O error in check_refcounts_l2".into());
                return Err(e);
            }
        };
        let mut next_contiguous = 0u64;
        for i in 0..g.l2_entries() as usize {
            let mut e = t[i * step];
            let bm = if g.ext { t[i * 2 + 1] } else { 0 };
            let k = kind(e, g.ext);
            if k != Kind::Compressed && e & L2E_STD_RESERVED_MASK != 0 {
                w.res.corruptions += times;
                w.msg(
                    format!("ERROR found l2 entry with reserved bits set: {e:x}"),
                    times,
                );
            }
            match k {
                Kind::Compressed => {
                    if e & OFLAG_COPIED != 0 {
                        let (off, _) = g.compressed_range(e);
                        w.res.corruptions += times;
                        w.msg(
                            format!("ERROR: coffset={off:#x}: copied flag must never be set for compressed clusters"),
                            times,
                        );
                        e &= !OFLAG_COPIED;
                    }
                    if bm != 0 {
                        w.res.corruptions += times;
                        w.msg(
                            format!("ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry={e:#x}"),
                            times,
                        );
                        continue;
                    }
                    let (off, len) = g.compressed_range(e);
                    self.inc(w, off, len, times);
                    if active {
                        w.res.allocated += times;
                        w.res.compressed += times;
                        // Compressed clusters count as fragmented (QEMU).
                        w.res.fragmented += times;
                    }
                }
                Kind::ZeroAlloc | Kind::Normal => {
                    let off = e & L2E_OFFSET_MASK;
                    if (bm >> 32) & bm != 0 {
                        w.res.corruptions += times;
                        w.msg(
                            format!("ERROR offset={off:x}: Allocated cluster has corrupted subcluster allocation bitmap"),
                            times,
                        );
                    }
                    if !off.is_multiple_of(cs) {
                        let has_data = if g.ext {
                            bm & BM_ALL_ALLOC != 0
                        } else {
                            e & OFLAG_ZERO == 0
                        };
                        if has_data {
                            w.res.corruptions += times;
                            w.msg(
                                format!("ERROR offset={off:x}: Data cluster is not properly aligned; L2 entry corrupted."),
                                times,
                            );
                        } else {
                            w.msg(
                                format!(
                                    "{} offset={off:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.",
                                    if fix.errors { "Repairing" } else { "ERROR" }
                                ),
                                1,
                            );
                            if fix.errors {
                                // Make the entry read as zeros; the other
                                // visits of this table then see it fixed.
                                let (ne, nbm) = if g.ext {
                                    let b = bm | (bm << 32);
                                    (0, b & BM_ALL_ZERO)
                                } else {
                                    (OFLAG_ZERO, 0)
                                };
                                if l2 < cs {
                                    // The table overlaps the header:
                                    // QEMU's overlap check refuses.
                                    w.res.corruptions += 1;
                                    w.res.check_errors += 1;
                                    w.msgs.push("ERROR: Overlap check failed".into());
                                    return Err(Stop::Abort);
                                }
                                t[i * step] = ne;
                                let mut raw = ne.to_be_bytes().to_vec();
                                if g.ext {
                                    t[i * 2 + 1] = nbm;
                                    raw.extend_from_slice(&nbm.to_be_bytes());
                                }
                                self.pwrite(&raw, l2 + (i * step * 8) as u64)?;
                                self.l2c.remove(l2);
                                w.res.corruptions_fixed += 1;
                                continue;
                            }
                            w.res.corruptions += times;
                        }
                    }
                    if active {
                        w.res.allocated += times;
                        if next_contiguous != 0 && off != next_contiguous {
                            w.res.fragmented += times;
                        }
                        next_contiguous = off + cs;
                    }
                    self.inc(w, off, cs, times);
                }
                Kind::ZeroPlain => {}
                Kind::Unallocated => {
                    if bm & BM_ALL_ALLOC != 0 {
                        w.res.corruptions += times;
                        w.msg(
                            "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                                .into(),
                            times,
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The refcount table's entries and blocks (QEMU's check_refblocks).
    fn check_refblocks(&mut self, w: &mut Walk, fix: Fix) {
        let cs = self.g.cs;
        for i in 0..self.rt.len() {
            let e = self.rt[i];
            let off = e & REFT_OFFSET_MASK;
            if e & REFT_RESERVED_MASK != 0 {
                w.res.corruptions += 1;
                w.msgs.push(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                w.rebuild = true;
                continue;
            }
            if !off.is_multiple_of(cs) {
                w.res.corruptions += 1;
                w.msgs.push(format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
                w.rebuild = true;
                continue;
            }
            let c = off >> self.g.cb;
            if c >= w.imrt.refs.len() as u64 {
                // QEMU grows the file to hold the block, finds it empty and
                // rebuilds; rebuilding straight away ends the same.
                w.res.corruptions += 1;
                w.msgs.push(format!(
                    "{} refcount block {i} is outside image",
                    if fix.errors { "Repairing" } else { "ERROR" }
                ));
                if fix.errors {
                    w.rebuild = true;
                }
                continue;
            }
            if off != 0 {
                self.inc(w, off, cs, 1);
                let n = w.imrt.get(c);
                if n != 1 {
                    w.res.corruptions += 1;
                    w.msgs
                        .push(format!("ERROR refcount block {i} refcount={n}"));
                    w.rebuild = true;
                }
            }
        }
    }

    /// Compares counted and stored refcounts (QEMU's compare_refcounts).
    fn compare(&mut self, w: &mut Walk, fix: Fix) -> Step {
        w.highest = 0;
        for c in 0..w.imrt.refs.len() as u64 {
            let stored = match self.qemu_refcount(w, c) {
                Ok(v) => v,
                Err(()) => {
                    w.res.check_errors += 1;
                    w.msgs.push(format!(
                        "Can't get refcount for cluster {c}: Input/output error"
                    ));
                    continue;
                }
            };
            let counted = w.imrt.get(c);
            if stored > 0 || counted > 0 {
                w.highest = c;
            }
            if stored == counted {
                continue;
            }
            let mut fixing = None;
            if stored == 0 {
                w.rebuild = true;
            } else if stored > counted && fix.leaks {
                fixing = Some(true);
            } else if stored < counted && fix.errors {
                fixing = Some(false);
            }
            let verb = if fixing.is_some() {
                "Repairing"
            } else if stored < counted {
                "ERROR"
            } else {
                "Leaked"
            };
            w.msgs.push(format!(
                "{verb} cluster {c} refcount={stored} reference={counted}"
            ));
            if let Some(leak) = fixing {
                if self.set_refcount(c, counted).is_ok() {
                    // Later reads see the new value.
                    w.rb = None;
                    if leak {
                        w.res.leaks_fixed += 1;
                    } else {
                        w.res.corruptions_fixed += 1;
                    }
                    continue;
                }
            }
            if stored < counted {
                w.res.corruptions += 1;
            } else {
                w.res.leaks += 1;
            }
        }
        Ok(())
    }

    /// COPIED flags of the active tables against the stored refcounts
    /// (QEMU's check_oflag_copied).
    fn check_copied(&mut self, w: &mut Walk, fix: Fix) -> Step {
        let g = self.g;
        let step = g.step();
        let repair = fix.errors
            || (fix.leaks && w.res.check_errors == 0 && w.res.corruptions == 0 && w.res.leaks == 0);
        let verb = if repair { "Repairing" } else { "ERROR" };
        for i in 0..self.l1.len() {
            let l1e = self.l1[i];
            let l2 = l1e & L1E_OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            let Ok(rc) = self.qemu_refcount(w, l2 >> g.cb) else {
                continue;
            };
            if (rc == 1) != (l1e & OFLAG_COPIED != 0) {
                w.res.corruptions += 1;
                w.msgs.push(format!(
                    "{verb} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:x} refcount={rc}"
                ));
                if repair {
                    if self.h.l1_table_offset < g.cs {
                        // The L1 table overlaps the header: not written.
                        w.res.check_errors += 1;
                        return Err(Stop::Abort);
                    }
                    self.l1[i] = if rc == 1 {
                        l1e | OFLAG_COPIED
                    } else {
                        l1e & !OFLAG_COPIED
                    };
                    self.write_l1_entry(i)?;
                    w.res.corruptions -= 1;
                    w.res.corruptions_fixed += 1;
                }
            }
            let mut t = match self.read_table(l2, g.l2_entries() as usize * step) {
                Ok(t) => t,
                Err(e) => {
                    w.res.check_errors += 1;
                    w.msgs.push("ERROR: Could not read L2 table".into());
                    return Err(e);
                }
            };
            let mut dirty = 0u64;
            for j in 0..g.l2_entries() as usize {
                let e = t[j * step];
                let k = kind(e, g.ext);
                if k != Kind::Normal && k != Kind::ZeroAlloc {
                    continue;
                }
                let Ok(rc) = self.qemu_refcount(w, (e & L2E_OFFSET_MASK) >> g.cb) else {
                    continue;
                };
                if (rc == 1) != (e & OFLAG_COPIED != 0) {
                    w.res.corruptions += 1;
                    w.msgs.push(format!(
                        "{verb} OFLAG_COPIED data cluster: l2_entry={e:x} refcount={rc}"
                    ));
                    if repair {
                        t[j * step] = if rc == 1 {
                            e | OFLAG_COPIED
                        } else {
                            e & !OFLAG_COPIED
                        };
                        dirty += 1;
                    }
                }
            }
            if dirty > 0 {
                if l2 < g.cs || !l2.is_multiple_of(g.cs) {
                    // Writing there would hit the header or straddle
                    // clusters: QEMU's overlap check stops the repair.
                    w.res.check_errors += 1;
                    w.msgs.push(
                        "ERROR: Could not write L2 table; metadata overlap check failed".into(),
                    );
                    return Err(Stop::Abort);
                }
                self.write_u64_table(l2, &t, g.cs as usize)?;
                self.l2c.remove(l2);
                w.res.corruptions -= dirty;
                w.res.corruptions_fixed += dirty;
            }
        }
        Ok(())
    }
}
