//! Mapping guest offsets to clusters: the L1 and L2 tables (through the
//! L2 cache), subcluster units, extents.

use super::*;

impl Meta {
    /// The cached L2 table at `off`, loaded if needed.
    pub fn l2_table(&mut self, off: u64) -> Result<&mut Vec<u64>> {
        if !self.l2c.contains(off) {
            self.check_meta_offset("L2 table", off)?;
            let n = (self.g.l2_entries() as usize) * self.g.step();
            let t = self.read_u64_table(off, n)?;
            return Ok(self.l2c.insert(off, t));
        }
        let path = &self.path;
        self.l2c.get(off).ok_or_else(|| Error::Corrupt {
            path: path.clone(),
            what: "L2 cache lost a table".into(),
        })
    }

    pub(super) fn l2_get(&mut self, l2off: u64, idx: usize) -> Result<(u64, u64)> {
        let step = self.g.step();
        let t = self.l2_table(l2off)?;
        Ok((t[idx * step], if step == 2 { t[idx * 2 + 1] } else { 0 }))
    }

    /// Updates one L2 entry, in the cache and in the file.
    pub fn l2_set(&mut self, l2off: u64, idx: usize, e: u64, bm: u64) -> Result<()> {
        let step = self.g.step();
        let t = self.l2_table(l2off)?;
        t[idx * step] = e;
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&e.to_be_bytes());
        if step == 2 {
            t[idx * 2 + 1] = bm;
            raw[8..].copy_from_slice(&bm.to_be_bytes());
        }
        self.pwrite(&raw[..step * 8], l2off + (idx * step * 8) as u64)
    }

    /// Writes entries `lo..hi` of a cached L2 table to the file in one go.
    pub(super) fn l2_write_span(&mut self, l2off: u64, lo: usize, hi: usize) -> Result<()> {
        let step = self.g.step();
        let t = self.l2_table(l2off)?;
        let mut raw = Vec::with_capacity((hi - lo) * step * 8);
        for v in &t[lo * step..hi * step] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        self.pwrite(&raw, l2off + (lo * step * 8) as u64)
    }

    pub(super) fn write_l1_entry(&mut self, i: usize) -> Result<()> {
        let off = self.h.l1_table_offset + i as u64 * 8;
        let v = self.l1[i];
        self.pwrite(&v.to_be_bytes(), off)
    }

    /// How unit `u` (0..32 with extended L2, else 0) of an entry reads.
    pub(super) fn unit(&self, e: u64, bm: u64, u: u32) -> Result<Unit> {
        if e & OFLAG_COMPRESSED != 0 {
            return Ok(Unit::Compressed(e));
        }
        let host = e & L2E_OFFSET_MASK;
        if !host.is_multiple_of(self.g.cs) {
            return Err(self.corrupt(format!(
                "L2 entry {e:#x} points at unaligned offset {host:#x}"
            )));
        }
        if !self.g.ext {
            if e & OFLAG_ZERO != 0 {
                Ok(Unit::Zero)
            } else if host != 0 {
                Ok(Unit::Data(host))
            } else {
                Ok(Unit::Unalloc)
            }
        } else {
            let a = bm >> u & 1 != 0;
            let z = bm >> (32 + u) & 1 != 0;
            match (a, z) {
                (true, true) => Err(self.corrupt(format!(
                    "subcluster {u} both allocated and zero (bitmap {bm:#x})"
                ))),
                (false, true) => Ok(Unit::Zero),
                (true, false) if host == 0 => Err(self.corrupt(format!(
                    "subcluster {u} allocated in an entry without host offset"
                ))),
                (true, false) => Ok(Unit::Data(host + ((u as u64) << self.g.ub))),
                (false, false) => Ok(Unit::Unalloc),
            }
        }
    }

    /// Maps the extent at `off` (at most `max` bytes, > 0) to how it reads,
    /// merging neighbouring units of the same kind (contiguous for data).
    pub(super) fn map_extent(&mut self, off: u64, max: u64) -> Result<(Unit, u64)> {
        let g = self.g;
        let l1i = (off >> (g.cb + g.l2_bits)) as usize;
        let table_end = ((l1i as u64) + 1) << (g.cb + g.l2_bits);
        let max = max.min(table_end - off);
        let l2off = match self.l1.get(l1i) {
            Some(e) => e & L1E_OFFSET_MASK,
            None => 0,
        };
        if l2off == 0 {
            return Ok((Unit::Unalloc, max));
        }
        self.l2_table(l2off)?;
        let unit_size = 1u64 << g.ub;
        let units_per_cluster = 1u32 << (g.cb - g.ub);
        let mut gu = off >> g.ub; // guest unit index
        let first = self.unit_at(l2off, gu, units_per_cluster)?;
        let mut len = unit_size - (off & (unit_size - 1));
        let first = match first {
            Unit::Data(h) => Unit::Data(h + (off & (unit_size - 1))),
            Unit::Compressed(_) => {
                // One compressed cluster at a time.
                let len = g.cs - (off & (g.cs - 1));
                return Ok((first, len.min(max)));
            }
            u => u,
        };
        let mut expect = match first {
            Unit::Data(h) => h + len,
            _ => 0,
        };
        while len < max {
            gu += 1;
            let next = self.unit_at(l2off, gu, units_per_cluster)?;
            let same = match (first, next) {
                (Unit::Data(_), Unit::Data(h)) => h == expect,
                (Unit::Zero, Unit::Zero) | (Unit::Unalloc, Unit::Unalloc) => true,
                _ => false,
            };
            if !same {
                break;
            }
            len += unit_size;
            expect += unit_size;
        }
        Ok((first, len.min(max)))
    }

    pub(super) fn unit_at(&mut self, l2off: u64, gu: u64, upc: u32) -> Result<Unit> {
        let g = self.g;
        let idx = ((gu / upc as u64) & (g.l2_entries() - 1)) as usize;
        let step = g.step();
        let t = self.l2_table(l2off)?;
        let e = t[idx * step];
        let bm = if step == 2 { t[idx * 2 + 1] } else { 0 };
        self.unit(e, bm, (gu % upc as u64) as u32)
    }

    /// If `[off, off+max)` starts in a cluster we own with its units
    /// allocated, returns the host offset and how many bytes can be written
    /// in place contiguously.
    pub(super) fn map_in_place(&mut self, off: u64, max: u64) -> Result<Option<(u64, u64)>> {
        let g = self.g;
        let l1i = (off >> (g.cb + g.l2_bits)) as usize;
        let l1e = match self.l1.get(l1i) {
            Some(&e) => e,
            None => return Ok(None),
        };
        if l1e & OFLAG_COPIED == 0 || l1e & L1E_OFFSET_MASK == 0 {
            return Ok(None);
        }
        let l2off = l1e & L1E_OFFSET_MASK;
        let table_end = ((l1i as u64) + 1) << (g.cb + g.l2_bits);
        let max = max.min(table_end - off);
        let unit_size = 1u64 << g.ub;
        let upc = 1u32 << (g.cb - g.ub);
        let mut gu = off >> g.ub;
        let mut len = 0;
        let mut host0 = 0;
        let mut expect = 0;
        while len < max {
            let idx = ((gu / upc as u64) & (g.l2_entries() - 1)) as usize;
            let (e, bm) = self.l2_get(l2off, idx)?;
            if e & OFLAG_COPIED == 0 || e & OFLAG_COMPRESSED != 0 {
                break;
            }
            match self.unit(e, bm, (gu % upc as u64) as u32)? {
                Unit::Data(h) => {
                    let h = if len == 0 {
                        host0 = h + (off & (unit_size - 1));
                        expect = h;
                        h
                    } else {
                        h
                    };
                    if h != expect {
                        break;
                    }
                    self.check_data_write(h)?;
                }
                _ => break,
            }
            len += if len == 0 {
                unit_size - (off & (unit_size - 1))
            } else {
                unit_size
            };
            expect += unit_size;
            gu += 1;
        }
        if len == 0 {
            Ok(None)
        } else {
            Ok(Some((host0, len.min(max))))
        }
    }
}

/// Bitmap bits for units `lo..hi` (allocation half).
pub(super) fn unit_bits(lo: usize, hi: usize) -> u64 {
    let n = hi - lo;
    let mask = if n >= 32 {
        BM_ALL_ALLOC
    } else {
        (1u64 << n) - 1
    };
    mask << lo
}
