//! Cluster allocation: plans reserved under the metadata lock, data written
//! without it, then linked into the L2 table; copy-on-write of partial
//! clusters.

use super::*;

/// An allocation reserved under the metadata lock, whose data is written
/// without it and which is linked into the L2 table afterwards.
pub(super) struct AllocPlan {
    l2off: u64,
    /// First L2 entry index.
    pub(super) idx: usize,
    /// Clusters allocated (contiguous on the host).
    pub(super) n: usize,
    /// Host offset of the first cluster.
    pub(super) host: u64,
    /// The new clusters lie past everything the file ever held, so bytes
    /// not written there read as zeros.
    pub(super) fresh: bool,
    /// Guest byte range of the write this plan covers.
    pub(super) off: u64,
    pub(super) len: usize,
    /// Whether the first and last cluster read as zeros below the write
    /// (zero flag, no backing, or past the backing file's end); only
    /// consulted for partially written clusters.
    pub(super) head_zero: bool,
    pub(super) tail_zero: bool,
}

/// Largest allocating write done without dropping the metadata lock.
const CHEAP_WRITE: usize = 16 << 10;

impl AllocPlan {
    /// Whether the data write is small and needs no read: fresh clusters
    /// whose untouched parts read as zeros by themselves.
    pub(super) fn cheap(&self) -> bool {
        self.len <= CHEAP_WRITE && self.fresh && self.head_zero && self.tail_zero
    }
}

impl Meta {
    pub(super) fn is_inflight(&self, c: u64) -> bool {
        self.inflight.iter().any(|&(s, e)| c >= s && c < e)
    }

    /// Reserves new clusters for a write at guest `off` (at most `max`
    /// bytes) when its first clusters are neither allocated nor
    /// compressed (unallocated or zero, without extended L2): allocates a
    /// contiguous host run (refcounts on disk first) and marks the guest
    /// clusters in flight. Returns `None` where the general path applies.
    pub(super) fn plan_alloc(
        &mut self,
        q: &Qcow2,
        off: u64,
        max: u64,
    ) -> Result<Option<AllocPlan>> {
        let g = self.g;
        if g.ext {
            return Ok(None);
        }
        let cs = g.cs;
        let (l2off, idx) = self.l2_for_write(off)?;
        let c0 = off & !(cs - 1);
        let table_end = ((off >> (g.cb + g.l2_bits)) + 1) << (g.cb + g.l2_bits);
        let end = (off + max).min(table_end);
        let nmax = ((end - c0).div_ceil(cs)) as usize;
        let first_c = off >> g.cb;
        let t = self.l2_table(l2off)?;
        let mut n = 0;
        while n < nmax && t[idx + n] & !OFLAG_ZERO == 0 {
            n += 1;
        }
        let entries: Vec<u64> = t[idx..idx + n].to_vec();
        // Stop before clusters someone else is allocating.
        if let Some(k) = (1..n).find(|&k| self.is_inflight(first_c + k as u64)) {
            n = k;
        }
        if n == 0 {
            return Ok(None);
        }
        let file_end = self.file_end;
        let host = self.alloc_clusters(n as u64)?;
        let fresh = host >= file_end;
        // Nothing else may count these clusters as fresh.
        self.file_end = self.file_end.max(host + n as u64 * cs);
        self.inflight.push((first_c, first_c + n as u64));
        let len = ((c0 + n as u64 * cs).min(off + max) - off) as usize;
        let reads_zero = |e: u64, c_off: u64| {
            e & OFLAG_ZERO != 0 || q.backing().is_none_or(|b| c_off >= b.len())
        };
        let tail_c = c0 + (n as u64 - 1) * cs;
        Ok(Some(AllocPlan {
            l2off,
            idx,
            n,
            host,
            fresh,
            off,
            len,
            head_zero: reads_zero(entries[0], c0),
            tail_zero: reads_zero(entries[n - 1], tail_c),
        }))
    }

    /// Points the L2 entries of a planned allocation at its clusters, after
    /// their data is written.
    pub(super) fn link_alloc(&mut self, p: &AllocPlan) -> Result<()> {
        let cs = self.g.cs;
        let t = self.l2_table(p.l2off)?;
        for k in 0..p.n {
            t[p.idx + k] = (p.host + k as u64 * cs) | OFLAG_COPIED;
        }
        self.l2_write_span(p.l2off, p.idx, p.idx + p.n)
    }

    /// Writes `data` (or zeros for `None`) within one cluster at guest `off`,
    /// where the fast in-place path does not apply: allocates, copies on
    /// write from the old contents (backing, compressed, shared cluster) and
    /// updates the L2 entry after the data.
    pub(super) fn write_cluster_n(
        &mut self,
        q: &Qcow2,
        off: u64,
        data: Option<&[u8]>,
        n: usize,
    ) -> Result<()> {
        let g = self.g;
        let cs = g.cs as usize;
        let c_off = off & !(g.cs - 1);
        let a = (off - c_off) as usize;
        let b = a + n;
        let (l2off, idx) = self.l2_for_write(off)?;
        let (e, bm) = self.l2_get(l2off, idx)?;
        let compressed = e & OFLAG_COMPRESSED != 0;
        let host = if compressed { 0 } else { e & L2E_OFFSET_MASK };
        if !compressed {
            // Validates the entry (alignment).
            self.unit(e, bm, 0)?;
        }
        let unit = 1usize << g.ub;
        let (sa, sb) = (a / unit * unit, b.div_ceil(unit) * unit);
        let put = |buf: &mut [u8], base: usize| {
            // Copies the new data (or zeros) into buf, which starts at
            // in-cluster offset `base`.
            match data {
                Some(d) => buf[a - base..b - base].copy_from_slice(d),
                None => buf[a - base..b - base].fill(0),
            }
        };
        if host != 0 && e & OFLAG_COPIED != 0 {
            self.check_data_write(host)?;
            if !g.ext {
                if e & OFLAG_ZERO != 0 {
                    let mut buf = vec![0u8; cs];
                    put(&mut buf, 0);
                    self.pwrite(&buf, host)?;
                    return self.l2_set(l2off, idx, e & !OFLAG_ZERO, 0);
                }
                let mut buf = vec![0u8; n];
                put(&mut buf, a);
                return self.pwrite(&buf, host + a as u64);
            }
            let mut buf = vec![0u8; sb - sa];
            self.fill_units(q, e, bm, c_off, sa, sb, a, b, &mut buf)?;
            put(&mut buf, sa);
            self.pwrite(&buf, host + sa as u64)?;
            let bits = unit_bits(sa / unit, sb / unit);
            let nbm = (bm | bits) & !(bits << 32);
            return self.l2_set(l2off, idx, e, nbm);
        }
        // A new cluster.
        let new = self.alloc_clusters(1)?;
        let fresh = new >= self.file_end;
        if !g.ext || compressed || host != 0 {
            // Whole-cluster copy on write.
            let mut buf = vec![0u8; cs];
            let base_zero;
            if a == 0 && b == cs {
                base_zero = true;
            } else if compressed {
                let d = q.decompress_entry(e)?;
                buf.copy_from_slice(&d);
                base_zero = false;
            } else if host != 0 {
                // Shared cluster (snapshot): copy what this layer sees.
                if g.ext {
                    self.fill_units(q, e, bm, c_off, 0, cs, cs, cs, &mut buf)?;
                } else if e & OFLAG_ZERO == 0 {
                    self.pread(&mut buf, host)?;
                }
                base_zero = false;
            } else if e & OFLAG_ZERO != 0 {
                base_zero = true;
            } else {
                read_backing(q.backing(), &mut buf, c_off)?;
                base_zero = q.backing().is_none_or(|bk| c_off >= bk.len());
            }
            put(&mut buf, 0);
            if base_zero && fresh {
                // Past the end of the file the rest already reads as zeros.
                self.pwrite(&buf[a..b], new + a as u64)?;
            } else {
                self.pwrite(&buf, new)?;
            }
            let nbm = if g.ext { BM_ALL_ALLOC } else { 0 };
            self.l2_set(l2off, idx, new | OFLAG_COPIED, nbm)?;
        } else {
            // Extended L2, cluster without host: allocate it and write only
            // the touched subclusters; the others keep their zero or
            // unallocated state.
            let mut buf = vec![0u8; sb - sa];
            self.fill_units(q, e, bm, c_off, sa, sb, a, b, &mut buf)?;
            put(&mut buf, sa);
            self.pwrite(&buf, new + sa as u64)?;
            let bits = unit_bits(sa / unit, sb / unit);
            let nbm = (bm | bits) & !(bits << 32);
            self.l2_set(l2off, idx, new | OFLAG_COPIED, nbm)?;
        }
        // Drop the old reference last: a crash before this only leaks.
        if compressed {
            self.free_compressed(e)?;
        } else if host != 0 {
            self.decref(host >> g.cb, 1)?;
        }
        Ok(())
    }

    /// Fills `buf` (in-cluster range `[sa, sb)`, unit aligned) with what the
    /// units currently read as, except units entirely inside `[a, b)` which
    /// are about to be overwritten.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill_units(
        &mut self,
        q: &Qcow2,
        e: u64,
        bm: u64,
        c_off: u64,
        sa: usize,
        sb: usize,
        a: usize,
        b: usize,
        buf: &mut [u8],
    ) -> Result<()> {
        let unit = 1usize << self.g.ub;
        let mut s = sa;
        while s < sb {
            let chunk = &mut buf[s - sa..s - sa + unit];
            if !(s >= a && s + unit <= b) {
                match self.unit(e, bm, (s / unit) as u32)? {
                    Unit::Data(h) => self.pread(chunk, h)?,
                    Unit::Zero => chunk.fill(0),
                    Unit::Unalloc => read_backing(q.backing(), chunk, c_off + s as u64)?,
                    Unit::Compressed(_) => {
                        return Err(self.corrupt("compressed entry with subcluster bitmap".into()))
                    }
                }
            }
            s += unit;
        }
        Ok(())
    }
}
