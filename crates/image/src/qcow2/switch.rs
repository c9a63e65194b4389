//! Atomic metadata switches, for internal snapshots and for rebuilding a
//! broken refcount structure.
//!
//! A snapshot operation changes the active L1 table, COPIED flags in L2
//! tables, many refcounts and the snapshot table together. Done in place,
//! a crash in the middle leaves COPIED flags that disagree with refcounts,
//! which `qemu-img check` reports as corruption. Instead the new state is
//! built beside the old one, in clusters the old state does not use: a new
//! active L1 table, copies of the L2 tables whose COPIED flags change, a new
//! snapshot table and a complete new refcount table with its blocks,
//! counted from scratch for the new state. After a flush, one write of
//! header bytes 24..72 (size, L1 size and offset, refcount table offset
//! and size, snapshot count and offset) switches from the old state to the
//! new, and a second flush makes it durable. A crash before the switch
//! leaves the old state untouched (the new clusters are unreferenced and
//! free in its refcounts); after it, the new state is complete. Whatever
//! only the old state used is free in the new refcounts: nothing is left
//! to release afterwards.

use std::collections::{BTreeMap, HashMap};

use super::header::{MAX_L1_BYTES, MAX_REFTABLE_BYTES, OFF_SIZE};
use super::snapshot::Snapshot;
use super::{Meta, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED};
use crate::io::sync_data;
use crate::{Error, Result};

/// Most host clusters a switch accounts for (4 bytes each, like `check`).
pub(super) const MAX_SWITCH_CLUSTERS: u64 = 1 << 28;

/// Reference counts per host cluster, grown on demand up to `limit`
/// clusters (a bound derived from the file size, so that a hostile offset
/// cannot make it allocate much; [`MAX_SWITCH_CLUSTERS`] caps it further).
pub(super) struct Counts {
    v: Vec<u32>,
    limit: u64,
}

impl Counts {
    fn new(limit: u64) -> Counts {
        Counts {
            v: Vec::new(),
            limit: limit.min(MAX_SWITCH_CLUSTERS),
        }
    }

    fn add(&mut self, c: u64, n: u32) -> Result<()> {
        if c >= self.limit {
            return Err(Error::TooLarge {
                what: "host cluster index",
                value: c,
                limit: self.limit,
            });
        }
        let i = c as usize;
        if i >= self.v.len() {
            self.v.resize(i + 1, 0);
        }
        self.v[i] = self.v[i].saturating_add(n);
        Ok(())
    }

    fn get(&self, c: u64) -> u32 {
        self.v.get(c as usize).copied().unwrap_or(0)
    }

    /// Counts one reference to every cluster overlapping `[off, off+len)`.
    fn add_range(&mut self, cb: u32, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        for c in (off >> cb)..=((off + len - 1) >> cb) {
            self.add(c, 1)?;
        }
        Ok(())
    }
}

/// Hands out clusters no state uses, first fit.
struct Reserver {
    busy: Counts,
    hint: u64,
}

impl Reserver {
    /// `n` contiguous free clusters; returns the first cluster index.
    fn reserve(&mut self, n: u64) -> Result<u64> {
        let mut c = self.hint.max(1);
        loop {
            if (c + n) >= self.busy.limit {
                return Err(Error::TooLarge {
                    what: "host cluster index",
                    value: c + n,
                    limit: self.busy.limit,
                });
            }
            match (c..c + n).rev().find(|&k| self.busy.get(k) != 0) {
                // Restart past the last busy cluster of the window.
                Some(k) => c = k + 1,
                None => break,
            }
        }
        if c == self.hint.max(1) {
            self.hint = c + n;
        }
        for k in c..c + n {
            self.busy.add(k, 1)?;
        }
        Ok(c)
    }
}

/// The state to switch to: the active L1 entries (COPIED flags are
/// recomputed), the snapshot list (their L1 tables exist already) and the
/// virtual size.
pub(super) struct Target {
    pub l1: Vec<u64>,
    pub snapshots: Vec<Snapshot>,
    pub size: u64,
}

impl Meta {
    /// Walks one L1 tree: counts each L2 table once in `tables` and every
    /// data cluster (compressed ones per cluster touched) in `data`. With
    /// `strict`, bad entries are an error; otherwise they are skipped (a
    /// repair counts what can be counted).
    fn tree_refs(
        &mut self,
        l1: &[u64],
        tables: &mut HashMap<u64, u32>,
        data: &mut Counts,
        strict: bool,
    ) -> Result<()> {
        let g = self.g;
        let step = g.step();
        let eof = self.file_end.div_ceil(g.cs);
        let mut seen = std::collections::HashSet::new();
        for &l1e in l1 {
            let l2off = l1e & L1E_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            if !seen.insert(l2off) {
                if strict {
                    return Err(self.corrupt(format!(
                        "L2 table at {l2off:#x} referenced twice by one L1 table"
                    )));
                }
                continue;
            }
            let t = match self.l2_table(l2off) {
                Ok(t) => t.clone(),
                Err(e) if strict => return Err(e),
                Err(_) => continue,
            };
            *tables.entry(l2off).or_default() += 1;
            for i in 0..g.l2_entries() as usize {
                let e = t[i * step];
                if e & OFLAG_COMPRESSED != 0 {
                    let (off, len) = g.compressed_range(e);
                    if (off + len - 1) >> g.cb >= eof {
                        if strict {
                            return Err(self.corrupt(format!(
                                "compressed cluster at {off:#x} lies beyond the end of the file"
                            )));
                        }
                        continue;
                    }
                    data.add_range(g.cb, off & !511, len + (off & 511))?;
                    continue;
                }
                let host = e & L2E_OFFSET_MASK;
                if host == 0 {
                    continue;
                }
                if !host.is_multiple_of(g.cs) {
                    if strict {
                        return Err(self.corrupt(format!(
                            "L2 entry {e:#x} points at unaligned offset {host:#x}"
                        )));
                    }
                    continue;
                }
                if host >> g.cb >= eof {
                    if strict {
                        return Err(self.corrupt(format!(
                            "data cluster at {host:#x} lies beyond the end of the file"
                        )));
                    }
                    continue;
                }
                data.add(host >> g.cb, 1)?;
            }
        }
        Ok(())
    }

    /// Clusters the current on-disk state uses (header, tables, data,
    /// snapshot table, refcount structure): the new state must not be
    /// written over them.
    fn busy_now(&mut self, strict: bool, limit: u64) -> Result<Counts> {
        let g = self.g;
        let mut busy = Counts::new(limit);
        busy.add(0, 1)?;
        // Tables out of range are corrupt (strict) or irrelevant (repair).
        let meta = |busy: &mut Counts, off: u64, len: u64| match busy.add_range(g.cb, off, len) {
            Err(e) if strict => Err(e),
            _ => Ok(()),
        };
        meta(&mut busy, self.h.l1_table_offset, self.l1.len() as u64 * 8)?;
        let mut tables = HashMap::new();
        let l1 = self.l1.clone();
        self.tree_refs(&l1, &mut tables, &mut busy, strict)?;
        let snap_bytes = Self::snapshot_table_bytes(&self.snapshots).len() as u64;
        meta(&mut busy, self.h.snapshots_offset, snap_bytes)?;
        for s in self.snapshots.clone() {
            meta(&mut busy, s.l1_offset, s.l1_size as u64 * 8)?;
            match self.read_u64_table(s.l1_offset, s.l1_size as usize) {
                Ok(sl1) => self.tree_refs(&sl1, &mut tables, &mut busy, strict)?,
                Err(e) if strict => return Err(e),
                Err(_) => {}
            }
        }
        for off in tables.keys() {
            busy.add(off >> g.cb, 1)?;
        }
        meta(
            &mut busy,
            self.h.refcount_table_offset,
            self.h.refcount_table_clusters as u64 * g.cs,
        )?;
        let eof = self.file_end.div_ceil(g.cs);
        for &e in &self.rt {
            let off = e & L1E_OFFSET_MASK;
            if off != 0 && off.is_multiple_of(g.cs) && off >> g.cb < eof {
                busy.add(off >> g.cb, 1)?;
            }
        }
        Ok(busy)
    }

    /// Switches atomically to `t` (see the module comment). With `strict`
    /// false (a repair), unreadable parts of the trees are skipped.
    pub(super) fn switch_to(&mut self, t: Target, strict: bool) -> Result<()> {
        let g = self.g;
        let cs = g.cs;
        let step = g.step();
        if (t.l1.len() as u64) * 8 > MAX_L1_BYTES {
            return Err(Error::TooLarge {
                what: "L1 table",
                value: t.l1.len() as u64 * 8,
                limit: MAX_L1_BYTES,
            });
        }
        // Everything lies inside the file, except what is reserved here:
        // at most a copy of every table and a new refcount structure, both
        // smaller than the file itself.
        let limit = 2 * self.file_end.div_ceil(cs) + 1024;
        let busy = self.busy_now(strict, limit)?;
        let mut res = Reserver { busy, hint: 1 };

        // References of the new state's trees.
        let mut tables: HashMap<u64, u32> = HashMap::new();
        let mut data = Counts::new(limit);
        let active: Vec<u64> = t.l1.iter().map(|e| e & !OFLAG_COPIED).collect();
        self.tree_refs(&active, &mut tables, &mut data, strict)?;
        let mut snap_l1s = Vec::with_capacity(t.snapshots.len());
        for s in &t.snapshots {
            let sl1 = match self.read_u64_table(s.l1_offset, s.l1_size as usize) {
                Ok(v) => v,
                Err(e) if strict => return Err(e),
                Err(_) => Vec::new(),
            };
            self.tree_refs(&sl1, &mut tables, &mut data, strict)?;
            snap_l1s.push(sl1);
        }

        // The active tables with exact COPIED flags; a table whose flags
        // change is written to a new cluster, since the old state (or a
        // snapshot) still reads the original.
        let mut new_l1 = vec![0u64; active.len()];
        let mut new_tables: Vec<(u64, Vec<u64>)> = Vec::new();
        for (i, &e) in active.iter().enumerate() {
            let l2off = e & L1E_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            if !tables.contains_key(&l2off) {
                // Unreadable (only in a repair): kept as it is.
                new_l1[i] = l2off;
                continue;
            }
            let mut tab = self.l2_table(l2off)?.clone();
            let mut changed = false;
            for j in 0..g.l2_entries() as usize {
                let v = tab[j * step];
                let host = v & L2E_OFFSET_MASK;
                if v & OFLAG_COMPRESSED != 0 || host == 0 || !host.is_multiple_of(cs) {
                    continue;
                }
                let nv = if data.get(host >> g.cb) == 1 {
                    v | OFLAG_COPIED
                } else {
                    v & !OFLAG_COPIED
                };
                if nv != v {
                    tab[j * step] = nv;
                    changed = true;
                }
            }
            if changed {
                let c = res.reserve(1)?;
                if let Some(n) = tables.get_mut(&l2off) {
                    *n -= 1;
                }
                tables.insert(c << g.cb, 1);
                new_tables.push((c << g.cb, tab));
                new_l1[i] = (c << g.cb) | OFLAG_COPIED;
            } else {
                new_l1[i] = l2off;
            }
        }
        for e in new_l1.iter_mut() {
            let l2off = *e & L1E_OFFSET_MASK;
            if l2off != 0 && tables.get(&l2off) == Some(&1) {
                *e |= OFLAG_COPIED;
            }
        }

        // New L1 table and snapshot table.
        let l1_clusters = (new_l1.len() as u64 * 8).div_ceil(cs);
        let l1_off = if l1_clusters == 0 {
            0
        } else {
            res.reserve(l1_clusters)? << g.cb
        };
        let snap_bytes = Self::snapshot_table_bytes(&t.snapshots);
        let snap_clusters = (snap_bytes.len() as u64).div_ceil(cs);
        let snap_off = if snap_clusters == 0 {
            0
        } else {
            res.reserve(snap_clusters)? << g.cb
        };

        // Final refcounts, except the refcount structure itself.
        let mut fin = data;
        fin.add(0, 1)?;
        fin.add_range(g.cb, l1_off, new_l1.len() as u64 * 8)?;
        fin.add_range(g.cb, snap_off, snap_bytes.len() as u64)?;
        for s in &t.snapshots {
            fin.add_range(g.cb, s.l1_offset, s.l1_size as u64 * 8)?;
        }
        for (&off, &n) in &tables {
            if n > 0 {
                fin.add(off >> g.cb, n)?;
            }
        }

        // The refcount structure: a block for every range with a nonzero
        // count (including the blocks and the table themselves), found by
        // iterating until placing them adds no new range.
        let rpb_bits = g.rpb_bits;
        let mut blocks: BTreeMap<u64, u64> = BTreeMap::new();
        let mut table: (u64, u64) = (0, 0); // (first cluster, clusters)
        loop {
            let mut want: Vec<u64> = Vec::new();
            let mut prev = u64::MAX;
            for (c, &v) in fin.v.iter().enumerate() {
                let idx = (c as u64) >> rpb_bits;
                if v != 0 && idx != prev {
                    want.push(idx);
                    prev = idx;
                }
            }
            let mut placed: Vec<u64> = blocks.values().copied().collect();
            placed.extend(table.0..table.0 + table.1);
            want.extend(placed.iter().map(|c| c >> rpb_bits));
            let mut added = false;
            for idx in want {
                if let std::collections::btree_map::Entry::Vacant(v) = blocks.entry(idx) {
                    v.insert(res.reserve(1)?);
                    added = true;
                }
            }
            let entries = blocks.keys().next_back().map_or(1, |&k| k + 1);
            let need = (entries * 8).div_ceil(cs);
            if need > table.1 {
                // A little headroom so that the next growth of the file
                // does not move the table at once.
                let clusters = need + need / 4;
                table = (res.reserve(clusters)?, clusters);
                added = true;
            }
            if !added {
                break;
            }
        }
        if table.1 * cs > MAX_REFTABLE_BYTES.max(cs) {
            return Err(Error::TooLarge {
                what: "refcount table",
                value: table.1 * cs,
                limit: MAX_REFTABLE_BYTES,
            });
        }
        for &c in blocks.values() {
            fin.add(c, 1)?;
        }
        for c in table.0..table.0 + table.1 {
            fin.add(c, 1)?;
        }
        let max = g.max_refcount();
        if let Some((c, _)) = fin.v.iter().enumerate().find(|(_, &v)| v as u64 > max) {
            return Err(Error::RefcountOverflow {
                offset: (c as u64) << g.cb,
                bits: 1 << g.rc_order,
            });
        }

        // Write everything new, then switch.
        for (off, tab) in &new_tables {
            self.write_u64_table(*off, tab, cs as usize)?;
        }
        if l1_off != 0 {
            self.write_u64_table(l1_off, &new_l1, (l1_clusters * cs) as usize)?;
        }
        if snap_off != 0 {
            let mut padded = snap_bytes.clone();
            padded.resize((snap_clusters * cs) as usize, 0);
            self.pwrite(&padded, snap_off)?;
        }
        let rpb = 1u64 << rpb_bits;
        let mut rt = vec![0u64; (table.1 * cs / 8) as usize];
        for (&idx, &c) in &blocks {
            let mut block = vec![0u8; cs as usize];
            for k in 0..rpb {
                let v = fin.get((idx << rpb_bits) + k);
                if v != 0 {
                    Meta::write_entry(g.rc_order, &mut block, k, v as u64);
                }
            }
            self.pwrite(&block, c << g.cb)?;
            rt[idx as usize] = c << g.cb;
        }
        self.write_u64_table(table.0 << g.cb, &rt, (table.1 * cs) as usize)?;
        sync_data(&self.file, &self.path)?;
        let mut hdr = [0u8; 48];
        hdr[0..8].copy_from_slice(&t.size.to_be_bytes());
        hdr[8..12].copy_from_slice(&self.h.crypt_method.to_be_bytes());
        hdr[12..16].copy_from_slice(&(new_l1.len() as u32).to_be_bytes());
        hdr[16..24].copy_from_slice(&l1_off.to_be_bytes());
        hdr[24..32].copy_from_slice(&(table.0 << g.cb).to_be_bytes());
        hdr[32..36].copy_from_slice(&(table.1 as u32).to_be_bytes());
        hdr[36..40].copy_from_slice(&(t.snapshots.len() as u32).to_be_bytes());
        hdr[40..48].copy_from_slice(&snap_off.to_be_bytes());
        self.pwrite(&hdr, OFF_SIZE)?;
        sync_data(&self.file, &self.path)?;

        self.h.size = t.size;
        self.h.l1_size = new_l1.len() as u32;
        self.h.l1_table_offset = l1_off;
        self.h.refcount_table_offset = table.0 << g.cb;
        self.h.refcount_table_clusters = table.1 as u32;
        self.h.nb_snapshots = t.snapshots.len() as u32;
        self.h.snapshots_offset = snap_off;
        self.l1 = new_l1;
        self.rt = rt;
        self.snapshots = t.snapshots;
        // Tables the old state used may be free now and reused for data.
        self.l2c.clear();
        self.rbc.clear();
        for (off, tab) in new_tables {
            self.l2c.insert(off, tab);
        }
        self.free_hint = 0;
        self.free_gen += 1;
        self.ctail = 0;
        Ok(())
    }
}
