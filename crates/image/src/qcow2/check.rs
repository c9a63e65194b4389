//! `check`: recount every reference in the image, compare with the stored
//! refcounts and COPIED flags, repair what is allowed.

use super::switch::Target;
use super::{
    Meta, BM_ALL_ALLOC, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED,
    OFLAG_ZERO,
};
use crate::{CheckReport, Error, Repair, Result};

/// Most host clusters `check` accounts for (4 bytes each): 1 GiB of
/// counters. Larger files are refused rather than exhausting memory.
const MAX_CHECK_CLUSTERS: u64 = 1 << 28;

struct Counter {
    refs: Vec<u32>,
    cs_bits: u32,
    nclusters: u64,
}

impl Counter {
    /// Counts one reference to every cluster overlapping `[off, off+len)`.
    fn inc(&mut self, r: &mut CheckReport, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = off >> self.cs_bits;
        let last = (off + len - 1) >> self.cs_bits;
        for c in first..=last {
            if c >= self.nclusters {
                r.corruptions += 1;
                r.messages.push(format!(
                    "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {:#x} size {len:#x}",
                    c << self.cs_bits
                ));
                return;
            }
            let v = &mut self.refs[c as usize];
            *v = v.saturating_add(1);
        }
    }
}

impl Meta {
    pub fn check_and_repair(&mut self, repair: Repair) -> Result<CheckReport> {
        self.check_inner(repair, true)
    }

    /// Rebuilds the whole refcount structure from the references (like
    /// `qemu-img check -r all` when the refcount table or its blocks are
    /// broken), then checks again; the report covers both passes.
    fn rebuild_and_recheck(&mut self, mut r: CheckReport) -> Result<CheckReport> {
        r.messages.push("Rebuilding refcount structure".into());
        let target = Target {
            l1: self.l1.clone(),
            snapshots: self.snapshots.clone(),
            size: self.h.size,
        };
        self.switch_to(target, false)?;
        let r2 = self.check_inner(Repair::All, false)?;
        let mut out = r2;
        // What the second pass still finds was not fixed (e.g. a bad L2
        // entry); the rest of the first pass's findings were.
        let unfixed = out.corruptions - out.corruptions_fixed;
        out.corruptions_fixed += r.corruptions.saturating_sub(unfixed);
        out.corruptions = out.corruptions_fixed + unfixed;
        // Leaks of the broken structure are gone with it.
        out.leaks_fixed += r.leaks;
        out.leaks += r.leaks;
        r.messages.append(&mut out.messages);
        out.messages = r.messages;
        Ok(out)
    }

    fn check_inner(&mut self, repair: Repair, may_rebuild: bool) -> Result<CheckReport> {
        let g = self.g;
        let cs = g.cs;
        let mut r = CheckReport::default();
        let nclusters = self.file_end.div_ceil(cs);
        if nclusters > MAX_CHECK_CLUSTERS {
            return Err(Error::TooLarge {
                what: "image file (clusters to check)",
                value: nclusters,
                limit: MAX_CHECK_CLUSTERS,
            });
        }
        let mut cnt = Counter {
            refs: vec![0; nclusters as usize],
            cs_bits: g.cb,
            nclusters,
        };
        r.total_clusters = self.h.size.div_ceil(cs);
        // Header.
        cnt.inc(&mut r, 0, cs);
        // Active L1 and its tree (with allocation statistics).
        cnt.inc(&mut r, self.h.l1_table_offset, self.l1.len() as u64 * 8);
        let l1 = self.l1.clone();
        self.count_tree(&mut cnt, &mut r, &l1, true)?;
        // Snapshots.
        if self.h.nb_snapshots > 0 {
            let mut bytes = 0u64;
            for s in &self.snapshots {
                bytes += (40 + 24 + s.extra_rest.len() + s.id.len() + s.name.len()).div_ceil(8)
                    as u64
                    * 8;
            }
            cnt.inc(&mut r, self.h.snapshots_offset, bytes);
        }
        for s in self.snapshots.clone() {
            cnt.inc(&mut r, s.l1_offset, s.l1_size as u64 * 8);
            match self.read_u64_table(s.l1_offset, s.l1_size as usize) {
                Ok(sl1) => self.count_tree(&mut cnt, &mut r, &sl1, false)?,
                Err(_) => r.check_errors += 1,
            }
        }
        // Refcount table and blocks.
        cnt.inc(
            &mut r,
            self.h.refcount_table_offset,
            self.h.refcount_table_clusters as u64 * cs,
        );
        let mut bad_blocks = Vec::new();
        for (i, &e) in self.rt.clone().iter().enumerate() {
            let off = e & L1E_OFFSET_MASK;
            if e & 0x1ff != 0 {
                r.corruptions += 1;
                r.messages.push(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                bad_blocks.push(i);
                continue;
            }
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(cs) {
                r.corruptions += 1;
                r.messages.push(format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
                bad_blocks.push(i);
                continue;
            }
            if off >> g.cb >= nclusters {
                r.corruptions += 1;
                r.messages
                    .push(format!("ERROR refcount block {i} is outside image"));
                bad_blocks.push(i);
                continue;
            }
            let used = cnt.refs[(off >> g.cb) as usize];
            if used != 0 {
                // The block's cluster is also something else (header,
                // table, data, another block): fixing refcounts in it would
                // overwrite that.
                r.corruptions += 1;
                r.messages.push(format!(
                    "ERROR refcount block {i} refcount={} (its cluster is used {used} time(s) elsewhere)",
                    used + 1
                ));
                bad_blocks.push(i);
                continue;
            }
            cnt.inc(&mut r, off, cs);
        }
        if !bad_blocks.is_empty() {
            // The refcount structure itself is broken; counting from it
            // would be meaningless: rebuild it or report.
            if repair == Repair::All && may_rebuild {
                return self.rebuild_and_recheck(r);
            }
            return Ok(r);
        }
        // Compare.
        let mut highest = 0u64;
        let mut missing_block: Vec<u64> = Vec::new();
        for c in 0..nclusters {
            let reference = cnt.refs[c as usize] as u64;
            if reference > 0 {
                highest = c;
            }
            let stored = match self.get_refcount(c) {
                Ok(v) => v,
                Err(_) => {
                    r.check_errors += 1;
                    continue;
                }
            };
            if stored == reference {
                continue;
            }
            let is_leak = stored > reference;
            let fix = match repair {
                Repair::None => false,
                Repair::Leaks => is_leak,
                Repair::All => true,
            };
            let verb = if fix {
                "Repairing"
            } else if is_leak {
                "Leaked"
            } else {
                "ERROR"
            };
            r.messages.push(format!(
                "{verb} cluster {c} refcount={stored} reference={reference}"
            ));
            if is_leak {
                r.leaks += 1;
            } else {
                r.corruptions += 1;
            }
            if fix {
                let has_block = self
                    .rt
                    .get((c >> g.rpb_bits) as usize)
                    .is_some_and(|e| e & L1E_OFFSET_MASK != 0);
                if !has_block {
                    missing_block.push(c);
                    continue;
                }
                self.set_refcount(c, reference)?;
                if is_leak {
                    r.leaks_fixed += 1;
                } else {
                    r.corruptions_fixed += 1;
                }
            }
        }
        if !missing_block.is_empty() && may_rebuild {
            // Referenced clusters without a refcount block: the table does
            // not describe the image; rebuild it whole.
            return self.rebuild_and_recheck(r);
        }
        if !missing_block.is_empty() {
            // Referenced clusters without a refcount block: create blocks
            // that avoid every such cluster, then count them.
            let avoid: Vec<(u64, u64)> = missing_block.iter().map(|&c| (c, c + 1)).collect();
            self.free_hint = nclusters;
            for &c in &missing_block {
                self.ensure_blocks_pub(c, &avoid)?;
                let v = cnt.refs[c as usize] as u64;
                self.set_refcount(c, v)?;
                r.corruptions_fixed += 1;
            }
        }
        r.image_end_offset = (highest + 1) * cs;
        // COPIED flags of the active tables.
        // After fixing leaks, COPIED flags may have to follow refcounts
        // that dropped to 1 (QEMU repairs them in that case too).
        let fix_copied = match repair {
            Repair::All => true,
            Repair::Leaks => r.corruptions == 0 && r.check_errors == 0,
            Repair::None => false,
        };
        self.check_copied(&mut r, fix_copied)?;
        if repair != Repair::None {
            self.free_hint = 0;
            self.file
                .sync_data()
                .map_err(|e| crate::image::io_err(&self.path, e))?;
        }
        Ok(r)
    }

    pub(super) fn ensure_blocks_pub(&mut self, c: u64, avoid: &[(u64, u64)]) -> Result<()> {
        self.ensure_blocks_for_check(c, avoid)
    }

    /// Counts the references of one L1 tree.
    fn count_tree(
        &mut self,
        cnt: &mut Counter,
        r: &mut CheckReport,
        l1: &[u64],
        active: bool,
    ) -> Result<()> {
        let g = self.g;
        let cs = g.cs;
        let step = g.step();
        let mut next_contiguous = 0u64;
        let mut seen = std::collections::HashSet::new();
        for (i, &l1e) in l1.iter().enumerate() {
            let l2off = l1e & L1E_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            if !seen.insert(l2off) {
                // One table mapped twice by the same L1 is corrupt; walking
                // it again would also let a crafted L1 make check run for
                // hours.
                r.corruptions += 1;
                r.messages.push(format!(
                    "ERROR l2_offset={l2off:#x}: L2 table referenced twice by one L1 table"
                ));
                cnt.inc(r, l2off, cs);
                continue;
            }
            if !l2off.is_multiple_of(cs) {
                r.corruptions += 1;
                r.messages.push(format!(
                    "ERROR l2_offset={l2off:#x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                continue;
            }
            cnt.inc(r, l2off, cs);
            let t = match self.l2_table(l2off) {
                Ok(t) => t.clone(),
                Err(_) => {
                    r.check_errors += 1;
                    r.messages.push(format!(
                        "ERROR: I/O error in check_refcounts_l2 (L1 index {i})"
                    ));
                    continue;
                }
            };
            for j in 0..g.l2_entries() as usize {
                let e = t[j * step];
                let bm = if step == 2 { t[j * 2 + 1] } else { 0 };
                if e & OFLAG_COMPRESSED != 0 {
                    if g.ext && bm != 0 {
                        r.corruptions += 1;
                        r.messages.push(format!(
                            "ERROR compressed cluster {j} with non-zero subcluster allocation bitmap, entry={e:#x}"
                        ));
                    }
                    let (off, len) = g.compressed_range(e);
                    cnt.inc(r, off & !511, len + (off & 511));
                    if active {
                        r.allocated_clusters += 1;
                        r.compressed_clusters += 1;
                        next_contiguous = 0;
                    }
                    continue;
                }
                let host = e & L2E_OFFSET_MASK;
                if host == 0 {
                    if g.ext && bm & BM_ALL_ALLOC != 0 {
                        r.corruptions += 1;
                        r.messages.push(format!(
                            "ERROR subcluster allocated without host offset, entry={e:#x} bitmap={bm:#x}"
                        ));
                    }
                    continue;
                }
                if !host.is_multiple_of(cs) {
                    r.corruptions += 1;
                    r.messages.push(format!(
                        "ERROR offset={host:#x}: Cluster is not properly aligned; L2 entry corrupted."
                    ));
                    continue;
                }
                let _ = OFLAG_ZERO;
                cnt.inc(r, host, cs);
                if active {
                    r.allocated_clusters += 1;
                    if next_contiguous != 0 && host != next_contiguous {
                        r.fragmented_clusters += 1;
                    }
                    next_contiguous = host + cs;
                }
            }
        }
        Ok(())
    }

    /// Checks (and with `fix`, repairs) the COPIED flags of the active tables
    /// against the stored refcounts.
    fn check_copied(&mut self, r: &mut CheckReport, fix: bool) -> Result<()> {
        let g = self.g;
        let step = g.step();
        for i in 0..self.l1.len() {
            let l1e = self.l1[i];
            let l2off = l1e & L1E_OFFSET_MASK;
            if l2off == 0 || !l2off.is_multiple_of(g.cs) {
                continue;
            }
            let rc = self.get_refcount(l2off >> g.cb)?;
            if (rc == 1) != (l1e & OFLAG_COPIED != 0) {
                r.corruptions += 1;
                r.messages.push(format!(
                    "{} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:x} refcount={rc}",
                    if fix { "Repairing" } else { "ERROR" }
                ));
                if fix {
                    self.l1[i] = if rc == 1 {
                        l1e | OFLAG_COPIED
                    } else {
                        l1e & !OFLAG_COPIED
                    };
                    self.write_l1_entry(i)?;
                    r.corruptions_fixed += 1;
                }
            }
            let Ok(t) = self.l2_table(l2off).map(|t| t.clone()) else {
                continue;
            };
            let mut t = t;
            let mut changed = false;
            for j in 0..g.l2_entries() as usize {
                let e = t[j * step];
                let host = e & L2E_OFFSET_MASK;
                if e & OFLAG_COMPRESSED != 0 || host == 0 || !host.is_multiple_of(g.cs) {
                    continue;
                }
                let rc = self.get_refcount(host >> g.cb)?;
                if (rc == 1) != (e & OFLAG_COPIED != 0) {
                    r.corruptions += 1;
                    r.messages.push(format!(
                        "{} OFLAG_COPIED data cluster: l2_entry={e:x} refcount={rc}",
                        if fix { "Repairing" } else { "ERROR" }
                    ));
                    if fix {
                        t[j * step] = if rc == 1 {
                            e | OFLAG_COPIED
                        } else {
                            e & !OFLAG_COPIED
                        };
                        changed = true;
                        r.corruptions_fixed += 1;
                    }
                }
            }
            if changed {
                self.write_u64_table(l2off, &t, g.cs as usize)?;
                self.l2c.insert(l2off, t);
            }
        }
        Ok(())
    }
}
