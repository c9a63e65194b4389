//! Refcounts: reading and updating them through the refcount block cache,
//! cluster allocation, and growing the refcount table.

use super::header::{MAX_REFTABLE_BYTES, OFF_RT_OFFSET};
use super::{be64_at, Meta, OFLAG_COMPRESSED};
use crate::io::sync_data;
use crate::{Error, Result};

/// Highest cluster index the allocator hands out: keeps byte offsets below
/// 2^56 (the L2 entry offset field) for every cluster size.
const MAX_HOST_OFFSET: u64 = 1 << 56;

impl Meta {
    fn rpb(&self) -> u64 {
        1 << self.g.rpb_bits
    }

    /// Refcount block for table index `idx`, loaded into the cache.
    fn refblock(&mut self, idx: usize) -> Result<Option<u64>> {
        let off = match self.rt.get(idx) {
            // Offset bits above the L1/L2 offset field cannot name a cluster
            // of any file (QEMU fails to read there): corrupt, not masked.
            Some(&e) if e & !super::L1E_OFFSET_MASK & !0x1ff != 0 => {
                return Err(self.corrupt(format!(
                    "refcount table entry {idx} ({e:#x}) points past the largest possible offset"
                )))
            }
            Some(&e) => e & super::L1E_OFFSET_MASK,
            None => return Ok(None),
        };
        if off == 0 {
            return Ok(None);
        }
        if !self.rbc.contains(off) {
            self.check_meta_offset("refcount block", off)?;
            let mut b = vec![0u8; self.g.cs as usize];
            self.pread(&mut b, off)?;
            self.rbc.insert(off, b);
        }
        Ok(Some(off))
    }

    /// Stores `v` as entry `i` of `block`; returns the byte range touched.
    pub(super) fn write_entry(order: u32, block: &mut [u8], i: u64, v: u64) -> (usize, usize) {
        match order {
            0..=2 => {
                let bits = 1u64 << order;
                let per_byte = 8 / bits;
                let bi = (i / per_byte) as usize;
                let shift = (i % per_byte) * bits;
                let mask = (((1u64 << bits) - 1) << shift) as u8;
                block[bi] = (block[bi] & !mask) | (((v << shift) as u8) & mask);
                (bi, bi + 1)
            }
            3 => {
                block[i as usize] = v as u8;
                (i as usize, i as usize + 1)
            }
            4 => {
                let o = 2 * i as usize;
                block[o..o + 2].copy_from_slice(&(v as u16).to_be_bytes());
                (o, o + 2)
            }
            5 => {
                let o = 4 * i as usize;
                block[o..o + 4].copy_from_slice(&(v as u32).to_be_bytes());
                (o, o + 4)
            }
            _ => {
                let o = 8 * i as usize;
                block[o..o + 8].copy_from_slice(&v.to_be_bytes());
                (o, o + 8)
            }
        }
    }

    /// Refcount of cluster index `c` (0 where no block covers it).
    pub fn get_refcount(&mut self, c: u64) -> Result<u64> {
        let idx = (c >> self.g.rpb_bits) as usize;
        let Some(off) = self.refblock(idx)? else {
            return Ok(0);
        };
        let i = c & (self.rpb() - 1);
        let order = self.g.rc_order;
        let block = match self.rbc.get(off) {
            Some(b) => b,
            None => return Err(self.corrupt("refcount cache lost a block".into())),
        };
        Ok(Meta::entry_of(order, block, i))
    }

    pub(super) fn entry_of(order: u32, block: &[u8], i: u64) -> u64 {
        match order {
            0..=2 => {
                let bits = 1u64 << order;
                let per_byte = 8 / bits;
                let byte = block[(i / per_byte) as usize];
                ((byte >> ((i % per_byte) * bits)) as u64) & ((1 << bits) - 1)
            }
            3 => block[i as usize] as u64,
            4 => u16::from_be_bytes([block[2 * i as usize], block[2 * i as usize + 1]]) as u64,
            5 => {
                let o = 4 * i as usize;
                u32::from_be_bytes([block[o], block[o + 1], block[o + 2], block[o + 3]]) as u64
            }
            _ => be64_at(block, 8 * i as usize),
        }
    }

    /// Sets the refcount of cluster `c`, whose block must exist; written
    /// through to the file.
    pub fn set_refcount(&mut self, c: u64, v: u64) -> Result<()> {
        let idx = (c >> self.g.rpb_bits) as usize;
        let Some(off) = self.refblock(idx)? else {
            return Err(self.corrupt(format!("no refcount block for cluster {c}")));
        };
        let i = c & (self.rpb() - 1);
        let order = self.g.rc_order;
        let block = match self.rbc.get(off) {
            Some(b) => b,
            None => return Err(self.corrupt("refcount cache lost a block".into())),
        };
        let (lo, hi) = Meta::write_entry(order, block, i, v);
        let bytes = block[lo..hi].to_vec();
        self.pwrite(&bytes, off + lo as u64)?;
        if v == 0 {
            self.free_gen += 1;
            self.free_hint = self.free_hint.min(c);
            if self.ctail != 0 && (self.ctail - 1) >> self.g.cb == c {
                // The packing cluster went away; never pack into a reuse.
                self.ctail = 0;
            }
            // A freed table must not be served from the caches if the
            // cluster is reused for something else.
            let byte = c << self.g.cb;
            self.l2c.remove(byte);
            self.rbc.remove(byte);
        }
        Ok(())
    }

    /// Adds `delta` to the refcount of cluster `c` (block must exist).
    pub fn add_refcount(&mut self, c: u64, delta: i64) -> Result<()> {
        let cur = self.get_refcount(c)?;
        let new = if delta >= 0 {
            let n = cur
                .checked_add(delta as u64)
                .filter(|&n| n <= self.g.max_refcount());
            match n {
                Some(n) => n,
                None => {
                    return Err(Error::RefcountOverflow {
                        offset: c << self.g.cb,
                        bits: 1 << self.g.rc_order,
                    })
                }
            }
        } else {
            match cur.checked_sub(delta.unsigned_abs()) {
                Some(n) => n,
                None => {
                    return Err(self.corrupt(format!(
                        "refcount underflow on cluster at {:#x} (refcount {cur})",
                        c << self.g.cb
                    )))
                }
            }
        };
        self.set_refcount(c, new)
    }

    /// Drops one reference from each of `n` clusters starting at index `c`.
    pub fn decref(&mut self, c: u64, n: u64) -> Result<()> {
        for i in c..c + n {
            self.add_refcount(i, -1)?;
        }
        Ok(())
    }

    /// Drops the references a compressed L2 entry holds.
    pub fn free_compressed(&mut self, e: u64) -> Result<()> {
        debug_assert!(e & OFLAG_COMPRESSED != 0);
        let (off, len) = self.g.compressed_range(e);
        let first = off >> self.g.cb;
        let last = (off + len - 1) >> self.g.cb;
        self.decref(first, last - first + 1)
    }

    fn in_avoid(c: u64, avoid: &[(u64, u64)]) -> bool {
        avoid.iter().any(|&(s, e)| c >= s && c < e)
    }

    /// First run of `n` free clusters at or after the free hint, outside
    /// `avoid` (cluster index ranges reserved by allocations in progress).
    fn find_free(&mut self, n: u64, avoid: &[(u64, u64)]) -> Result<u64> {
        let mut start = self.free_hint.max(1);
        loop {
            if (start + n) << self.g.cb > MAX_HOST_OFFSET {
                return Err(Error::TooLarge {
                    what: "image file",
                    value: (start + n) << self.g.cb,
                    limit: MAX_HOST_OFFSET,
                });
            }
            // Past the end of the file nothing can be in use (a refcount
            // there is a leak): not reading those refcounts bounds the scan
            // by the file size even on hostile refcount tables.
            let eof = self.file_end.div_ceil(self.g.cs);
            let mut busy = None;
            for c in start..start + n {
                if Self::in_avoid(c, avoid) || (c < eof && self.get_refcount(c)? != 0) {
                    busy = Some(c);
                    break;
                }
            }
            match busy {
                Some(c) => start = c + 1,
                None => return Ok(start),
            }
        }
    }

    /// Allocates `n` contiguous clusters (refcount 1) and returns the byte
    /// offset of the first. The refcounts are on disk before this returns.
    pub fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let start = self.find_free(n, &[])?;
        let avoid = [(start, start + n)];
        self.ensure_blocks(start, n, &avoid)?;
        for c in start..start + n {
            self.set_refcount(c, 1)?;
        }
        if self.free_hint == start || self.free_hint == 0 {
            self.free_hint = start + n;
        }
        Ok(start << self.g.cb)
    }

    /// Allocates `len` bytes for compressed data, packing them after the
    /// previous compressed cluster when they fit (each host cluster counts
    /// one reference per compressed cluster touching it, as QEMU does).
    pub fn alloc_bytes(&mut self, len: u64) -> Result<u64> {
        let cs = self.g.cs;
        let tail = self.ctail;
        if tail != 0 && !tail.is_multiple_of(cs) {
            let first = tail >> self.g.cb;
            let last = (tail + len - 1) >> self.g.cb;
            // The packed cluster must still be ours and the next ones free.
            let rc = self.get_refcount(first)?;
            let mut ok = rc > 0 && rc < self.g.max_refcount() && last - first <= 1;
            if ok && last > first {
                ok = self.get_refcount(last)? == 0;
            }
            if ok {
                self.add_refcount(first, 1)?;
                if last > first {
                    let avoid = [(last, last + 1)];
                    self.ensure_blocks(last, 1, &avoid)?;
                    self.set_refcount(last, 1)?;
                }
                self.ctail = tail + len;
                return Ok(tail);
            }
        }
        let n = len.div_ceil(cs);
        let off = self.alloc_clusters(n)?;
        self.ctail = off + len;
        Ok(off)
    }

    /// Makes sure refcount blocks cover clusters `[c, c+n)`.
    fn ensure_blocks(&mut self, c: u64, n: u64, avoid: &[(u64, u64)]) -> Result<()> {
        let first = c >> self.g.rpb_bits;
        let last = (c + n - 1) >> self.g.rpb_bits;
        for idx in first..=last {
            let present = self
                .rt
                .get(idx as usize)
                .is_some_and(|e| e & super::L1E_OFFSET_MASK != 0);
            if !present {
                self.create_block(idx as usize, avoid)?;
            }
        }
        Ok(())
    }

    /// Creates the refcount block for table index `idx`.
    fn create_block(&mut self, idx: usize, avoid: &[(u64, u64)]) -> Result<()> {
        if idx >= self.rt.len() {
            self.grow_refcount_table(idx + 1, avoid)?;
            if self.rt[idx] & super::L1E_OFFSET_MASK != 0 {
                return Ok(());
            }
        }
        let cs = self.g.cs as usize;
        let lo = (idx as u64) << self.g.rpb_bits;
        let hi = lo + self.rpb();
        // Every cluster the missing block would cover has refcount 0: put
        // the block inside its own range, describing itself.
        let own = (lo.max(1)..hi).find(|&c| !Self::in_avoid(c, avoid));
        let c = match own {
            Some(c) => {
                let mut block = vec![0u8; cs];
                Meta::write_entry(self.g.rc_order, &mut block, c - lo, 1);
                self.pwrite(&block, c << self.g.cb)?;
                self.rbc.insert(c << self.g.cb, block);
                c
            }
            None => {
                // The whole range is being allocated: place the block
                // elsewhere and count it there first.
                let c = self.find_free(1, avoid)?;
                let mut av = avoid.to_vec();
                av.push((c, c + 1));
                self.ensure_blocks(c, 1, &av)?;
                self.set_refcount(c, 1)?;
                let block = vec![0u8; cs];
                self.pwrite(&block, c << self.g.cb)?;
                self.rbc.insert(c << self.g.cb, block);
                c
            }
        };
        self.rt[idx] = c << self.g.cb;
        let v = self.rt[idx];
        let at = self.h.refcount_table_offset + idx as u64 * 8;
        self.pwrite(&v.to_be_bytes(), at)
    }

    /// Moves the refcount table to a larger one at the end of the file,
    /// together with the blocks needed to describe that new area.
    fn grow_refcount_table(&mut self, min_entries: usize, avoid: &[(u64, u64)]) -> Result<()> {
        let g = self.g;
        let cs = g.cs;
        let rpb = self.rpb();
        let file_clusters = self.file_end.div_ceil(cs);
        let s = avoid
            .iter()
            .map(|&(_, e)| e)
            .fold(file_clusters.max(self.free_hint), u64::max);
        let old_len = self.rt.len();
        let (mut nb, mut tc) = (0u64, 0u64);
        let mut entries;
        let mut missing: Vec<u64>;
        loop {
            let end = s + nb + tc;
            let needed = (min_entries as u64).max(end.div_ceil(rpb));
            entries = needed.max(old_len as u64 + old_len as u64 / 2 + 1);
            entries = (entries * 8).div_ceil(cs) * cs / 8;
            let tc2 = (entries * 8).div_ceil(cs);
            let end2 = s + nb + tc2;
            missing = ((s / rpb)..end2.div_ceil(rpb))
                .filter(|&i| {
                    self.rt
                        .get(i as usize)
                        .is_none_or(|e| e & super::L1E_OFFSET_MASK == 0)
                })
                .collect();
            if missing.len() as u64 == nb && tc2 == tc {
                break;
            }
            nb = missing.len() as u64;
            tc = tc2;
        }
        if entries * 8 > MAX_REFTABLE_BYTES.max(cs) {
            return Err(Error::TooLarge {
                what: "refcount table",
                value: entries * 8,
                limit: MAX_REFTABLE_BYTES,
            });
        }
        let end = s + nb + tc;
        // 1. Count the new area in blocks that already exist (only leaks
        //    if we crash before the switch).
        for c in s..end {
            let idx = (c / rpb) as usize;
            if idx < old_len && self.rt[idx] & super::L1E_OFFSET_MASK != 0 {
                self.set_refcount(c, 1)?;
            }
        }
        // 2. Write the new blocks, then the new table.
        let mut new_rt = self.rt.clone();
        new_rt.resize(entries as usize, 0);
        for (k, &idx) in missing.iter().enumerate() {
            let at = s + k as u64;
            let mut block = vec![0u8; cs as usize];
            let lo = idx * rpb;
            for c in s.max(lo)..end.min(lo + rpb) {
                Meta::write_entry(g.rc_order, &mut block, c - lo, 1);
            }
            self.pwrite(&block, at << g.cb)?;
            self.rbc.insert(at << g.cb, block);
            new_rt[idx as usize] = at << g.cb;
        }
        let table_off = (s + nb) << g.cb;
        self.write_u64_table(table_off, &new_rt, (tc * cs) as usize)?;
        sync_data(&self.file, &self.path)?;
        // 3. Switch the header to the new table.
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&table_off.to_be_bytes());
        hdr[8..].copy_from_slice(&(tc as u32).to_be_bytes());
        self.pwrite(&hdr, OFF_RT_OFFSET)?;
        let old_off = self.h.refcount_table_offset;
        let old_clusters = self.h.refcount_table_clusters as u64;
        self.h.refcount_table_offset = table_off;
        self.h.refcount_table_clusters = tc as u32;
        self.rt = new_rt;
        // 4. Release the old table.
        self.decref(old_off >> g.cb, old_clusters)?;
        Ok(())
    }
}
