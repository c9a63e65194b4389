//! Zeroing and discarding: zero flags, released clusters, partial
//! clusters written with zeros.

use super::*;

impl Meta {
    /// Makes `[off, off+len)` read as zeros (or as the backing file for
    /// [`ZeroMode::Empty`]), releasing whole clusters where allowed.
    pub(super) fn zero_range(
        &mut self,
        q: &Qcow2,
        off: u64,
        len: u64,
        mode: ZeroMode,
    ) -> Result<()> {
        let g = self.g;
        let cs = g.cs;
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let c_off = pos & !(cs - 1);
            let piece = (c_off + cs).min(end) - pos;
            if piece < cs {
                // Partial cluster: only zeros make sense here.
                if mode == ZeroMode::Empty {
                    pos += piece;
                    continue;
                }
                if g.ext {
                    self.zero_partial_ext(q, pos, piece)?;
                } else if !self.reads_zero_already(q, pos)? {
                    self.write_cluster_n(q, pos, None, piece as usize)?;
                }
                pos += piece;
                continue;
            }
            // Whole clusters up to the end of this L2 table.
            let span_end = ((pos >> (g.cb + g.l2_bits)) + 1) << (g.cb + g.l2_bits);
            let full_end = span_end.min(end & !(cs - 1));
            self.zero_clusters(q, pos, full_end, mode)?;
            pos = full_end;
        }
        Ok(())
    }

    /// True if the cluster at `off` is unallocated with nothing below it, or
    /// a zero cluster (nothing to do for zeroing).
    pub(super) fn reads_zero_already(&mut self, q: &Qcow2, off: u64) -> Result<bool> {
        let (u, _) = self.map_extent(off, 1)?;
        Ok(match u {
            Unit::Zero => true,
            Unit::Unalloc => q.backing().is_none_or(|b| off >= b.len()),
            _ => false,
        })
    }

    pub(super) fn zero_partial_ext(&mut self, q: &Qcow2, off: u64, len: u64) -> Result<()> {
        let g = self.g;
        let unit = 1u64 << g.ub;
        let end = off + len;
        let (ua, ub_) = (off.div_ceil(unit) * unit, end / unit * unit);
        // Partial units at both ends: write zeros.
        if ua > off {
            let e2 = ua.min(end);
            self.write_cluster_n(q, off, None, (e2 - off) as usize)?;
        }
        if ub_ > ua {
            let (l2off, idx) = self.l2_for_write(ua)?;
            let (e, bm) = self.l2_get(l2off, idx)?;
            if e & OFLAG_COMPRESSED != 0 {
                self.write_cluster_n(q, ua, None, (ub_ - ua) as usize)?;
            } else {
                let c_off = ua & !(g.cs - 1);
                let bits = unit_bits(
                    ((ua - c_off) / unit) as usize,
                    ((ub_ - c_off) / unit) as usize,
                );
                let nbm = (bm & !bits) | (bits << 32);
                if e & OFLAG_COPIED == 0 && e & L2E_OFFSET_MASK != 0 {
                    // Shared cluster: copy it first so the bitmap is ours.
                    self.write_cluster_n(q, ua, None, (ub_ - ua) as usize)?;
                } else {
                    self.l2_set(l2off, idx, e, nbm)?;
                }
            }
        }
        if end > ub_ && ub_ >= ua {
            self.write_cluster_n(q, ub_, None, (end - ub_) as usize)?;
        }
        Ok(())
    }

    /// Whole clusters `[start, end)` within one L2 table.
    pub(super) fn zero_clusters(
        &mut self,
        q: &Qcow2,
        start: u64,
        end: u64,
        mode: ZeroMode,
    ) -> Result<()> {
        let g = self.g;
        if start >= end {
            return Ok(());
        }
        let has_backing = q.backing().is_some();
        let l1i = (start >> (g.cb + g.l2_bits)) as usize;
        let l1e = self.l1.get(l1i).copied().unwrap_or(0);
        let no_table = l1e & L1E_OFFSET_MASK == 0;
        // Without a table every cluster is unallocated: reads as backing
        // (Empty: done) or zeros when there is no backing.
        if no_table && (mode == ZeroMode::Empty || !has_backing) {
            return Ok(());
        }
        if !g.v3 && mode != ZeroMode::Empty && has_backing {
            // v2 has no zero flag: write real zeros.
            let mut pos = start;
            while pos < end {
                self.write_cluster_n(q, pos, None, g.cs as usize)?;
                pos += g.cs;
            }
            return Ok(());
        }
        let (l2off, first) = self.l2_for_write(start)?;
        let count = ((end - start) >> g.cb) as usize;
        let mut frees: Vec<u64> = Vec::new();
        let step = g.step();
        {
            let t = self.l2_table(l2off)?;
            for i in first..first + count {
                let e = t[i * step];
                let bm = if step == 2 { t[i * 2 + 1] } else { 0 };
                let host = e & L2E_OFFSET_MASK;
                let owned = e & OFLAG_COMPRESSED == 0 && host != 0 && e & OFLAG_COPIED != 0;
                let (ne, nbm) = match mode {
                    ZeroMode::Empty => (0, 0),
                    ZeroMode::Zero { unmap } => {
                        if !unmap && owned {
                            if g.ext {
                                (e, BM_ALL_ZERO)
                            } else {
                                (e | OFLAG_ZERO, 0)
                            }
                        } else if g.ext {
                            (0, BM_ALL_ZERO)
                        } else if g.v3 {
                            (OFLAG_ZERO, 0)
                        } else {
                            (0, 0)
                        }
                    }
                };
                if (ne, nbm) == (e, bm) {
                    continue;
                }
                if ne & L2E_OFFSET_MASK != host || e & OFLAG_COMPRESSED != 0 {
                    frees.push(e);
                }
                t[i * step] = ne;
                if step == 2 {
                    t[i * 2 + 1] = nbm;
                }
            }
        }
        self.l2_write_span(l2off, first, first + count)?;
        for e in frees {
            if e & OFLAG_COMPRESSED != 0 {
                self.free_compressed(e)?;
            } else if e & L2E_OFFSET_MASK != 0 {
                self.decref((e & L2E_OFFSET_MASK) >> g.cb, 1)?;
            }
        }
        Ok(())
    }
}
