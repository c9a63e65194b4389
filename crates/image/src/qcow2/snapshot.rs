//! Internal snapshots: the snapshot table, and create/apply/delete with the
//! refcount and COPIED-flag bookkeeping QEMU does.

use std::collections::HashMap;

use super::header::{MAX_SNAPSHOTS, OFF_NB_SNAPSHOTS};
use super::{be64_at, Meta, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED};
use crate::image::io_err;
use crate::{Error, Result, SnapshotInfo};

/// Largest snapshot table accepted (QEMU's QCOW_MAX_SNAPSHOTS_SIZE).
const MAX_SNAPSHOT_TABLE: u64 = 64 << 20;
/// Largest per-snapshot extra data accepted (QEMU's limit).
const MAX_EXTRA_DATA: u32 = 1024;
/// Extra data we write: vm_state_size_large, disk_size, icount.
const OUR_EXTRA: usize = 24;

#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub l1_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    pub disk_size: Option<u64>,
    pub icount: Option<u64>,
    /// Extra data beyond the fields we know, kept on rewrite.
    pub extra_rest: Vec<u8>,
}

impl Snapshot {
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            vm_state_size: self.vm_state_size,
            date_sec: self.date_sec,
            date_nsec: self.date_nsec,
            vm_clock_nsec: self.vm_clock_nsec,
            icount: self.icount,
            disk_size: self.disk_size,
        }
    }

    fn serialize(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.l1_offset.to_be_bytes());
        out.extend_from_slice(&self.l1_size.to_be_bytes());
        out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.date_sec.to_be_bytes());
        out.extend_from_slice(&self.date_nsec.to_be_bytes());
        out.extend_from_slice(&self.vm_clock_nsec.to_be_bytes());
        out.extend_from_slice(&(self.vm_state_size.min(u32::MAX as u64) as u32).to_be_bytes());
        out.extend_from_slice(&((OUR_EXTRA + self.extra_rest.len()) as u32).to_be_bytes());
        out.extend_from_slice(&self.vm_state_size.to_be_bytes());
        out.extend_from_slice(&self.disk_size.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.icount.unwrap_or(u64::MAX).to_be_bytes());
        out.extend_from_slice(&self.extra_rest);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(self.name.as_bytes());
        let len = out.len() - start;
        out.resize(start + len.div_ceil(8) * 8, 0);
    }
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

/// Byte counts of one L1 walk: refcount increments per cluster index.
type Counts = HashMap<u64, u64>;

impl Meta {
    /// Parses the snapshot table named by the header.
    pub fn read_snapshots(&self) -> Result<Vec<Snapshot>> {
        let n = self.h.nb_snapshots;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(n.min(MAX_SNAPSHOTS) as usize);
        let mut off = self.h.snapshots_offset;
        let table_end_limit = off + MAX_SNAPSHOT_TABLE;
        for i in 0..n {
            let mut fixed = [0u8; 40];
            if off + 40 > self.file_end || off + 40 > table_end_limit {
                return Err(self.corrupt(format!(
                    "snapshot table entry {i} lies beyond the end of the file"
                )));
            }
            self.pread(&mut fixed, off)?;
            let id_len = be16(&fixed, 12) as u64;
            let name_len = be16(&fixed, 14) as u64;
            let extra = be32(&fixed, 36);
            if extra > MAX_EXTRA_DATA {
                return Err(self.corrupt(format!(
                    "snapshot {i} has {extra} bytes of extra data (limit {MAX_EXTRA_DATA})"
                )));
            }
            let var_len = extra as u64 + id_len + name_len;
            if off + 40 + var_len > self.file_end {
                return Err(self.corrupt(format!("snapshot {i} lies beyond the end of the file")));
            }
            let mut var = vec![0u8; var_len as usize];
            self.pread(&mut var, off + 40)?;
            let ex = &var[..extra as usize];
            let vm_state_large = (ex.len() >= 8).then(|| be64_at(ex, 0));
            let disk_size = (ex.len() >= 16).then(|| be64_at(ex, 8));
            let icount = (ex.len() >= 24)
                .then(|| be64_at(ex, 16))
                .filter(|&v| v != u64::MAX);
            let extra_rest = if ex.len() > OUR_EXTRA {
                ex[OUR_EXTRA..].to_vec()
            } else {
                Vec::new()
            };
            let e = extra as usize;
            let id = String::from_utf8_lossy(&var[e..e + id_len as usize]).into_owned();
            let name = String::from_utf8_lossy(&var[e + id_len as usize..]).into_owned();
            let l1_offset = be64_at(&fixed, 0);
            let l1_size = be32(&fixed, 8);
            if !l1_offset.is_multiple_of(self.g.cs)
                || (l1_size as u64) * 8 > super::header::MAX_L1_BYTES
            {
                return Err(self.corrupt(format!(
                    "snapshot '{name}' has an invalid L1 table ({l1_size} entries at {l1_offset:#x})"
                )));
            }
            out.push(Snapshot {
                l1_offset,
                l1_size,
                id,
                name,
                date_sec: be32(&fixed, 16),
                date_nsec: be32(&fixed, 20),
                vm_clock_nsec: be64_at(&fixed, 24),
                vm_state_size: vm_state_large.unwrap_or(be32(&fixed, 32) as u64),
                disk_size,
                icount,
                extra_rest,
            });
            off += (40 + var_len).div_ceil(8) * 8;
        }
        Ok(out)
    }

    fn snapshot_table_bytes(list: &[Snapshot]) -> Vec<u8> {
        let mut b = Vec::new();
        for s in list {
            s.serialize(&mut b);
        }
        b
    }

    /// Writes `list` as the new snapshot table, switches the header to it
    /// and frees the old table.
    fn write_snapshot_table(&mut self, list: Vec<Snapshot>) -> Result<()> {
        let g = self.g;
        let old_off = self.h.snapshots_offset;
        let old_bytes = Self::snapshot_table_bytes(&self.snapshots).len() as u64;
        let bytes = Self::snapshot_table_bytes(&list);
        let new_off = if bytes.is_empty() {
            0
        } else {
            let n = (bytes.len() as u64).div_ceil(g.cs);
            let off = self.alloc_clusters(n)?;
            let mut padded = bytes.clone();
            padded.resize((n * g.cs) as usize, 0);
            self.pwrite(&padded, off)?;
            off
        };
        self.file.sync_data().map_err(|e| io_err(&self.path, e))?;
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&(list.len() as u32).to_be_bytes());
        hdr[4..].copy_from_slice(&new_off.to_be_bytes());
        self.pwrite(&hdr, OFF_NB_SNAPSHOTS)?;
        self.h.nb_snapshots = list.len() as u32;
        self.h.snapshots_offset = new_off;
        self.snapshots = list;
        if old_off != 0 && old_bytes > 0 {
            self.decref(old_off >> g.cb, old_bytes.div_ceil(g.cs))?;
        }
        Ok(())
    }

    /// Counts the references an L1 table holds: its L2 tables and every
    /// cluster they point at.
    fn count_l1_refs(&mut self, l1: &[u64], counts: &mut Counts) -> Result<()> {
        let g = self.g;
        let step = g.step();
        let mut seen = std::collections::HashSet::new();
        for &l1e in l1 {
            let l2off = l1e & L1E_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            if !seen.insert(l2off) {
                return Err(self.corrupt(format!(
                    "L2 table at {l2off:#x} referenced twice by one L1 table"
                )));
            }
            *counts.entry(l2off >> g.cb).or_default() += 1;
            let t = self.l2_table(l2off)?.clone();
            for i in 0..g.l2_entries() as usize {
                let e = t[i * step];
                if e & OFLAG_COMPRESSED != 0 {
                    let (off, len) = g.compressed_range(e);
                    for c in (off >> g.cb)..=((off + len - 1) >> g.cb) {
                        *counts.entry(c).or_default() += 1;
                    }
                } else if e & L2E_OFFSET_MASK != 0 {
                    *counts.entry((e & L2E_OFFSET_MASK) >> g.cb).or_default() += 1;
                }
            }
        }
        Ok(())
    }

    /// Applies `sign` times the counts, checking for overflow first so that a
    /// refused operation changes nothing.
    fn apply_counts(&mut self, counts: &Counts, sign: i64) -> Result<()> {
        let mut keys: Vec<u64> = counts.keys().copied().collect();
        keys.sort_unstable();
        if sign > 0 {
            for &c in &keys {
                let cur = self.get_refcount(c)?;
                if cur
                    .checked_add(counts[&c])
                    .is_none_or(|v| v > self.g.max_refcount())
                {
                    return Err(Error::RefcountOverflow {
                        offset: c << self.g.cb,
                        bits: 1 << self.g.rc_order,
                    });
                }
            }
        }
        for c in keys {
            let delta = counts[&c] as i64 * sign;
            self.add_refcount(c, delta)?;
        }
        Ok(())
    }

    /// Sets the COPIED flag on the active L1 and L2 entries exactly where
    /// the refcount is 1.
    pub fn rebuild_copied_flags(&mut self) -> Result<()> {
        let g = self.g;
        let step = g.step();
        for i in 0..self.l1.len() {
            let l1e = self.l1[i];
            let l2off = l1e & L1E_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            let rc = self.get_refcount(l2off >> g.cb)?;
            let want = if rc == 1 { l2off | OFLAG_COPIED } else { l2off };
            if want != l1e {
                self.l1[i] = want;
                self.write_l1_entry(i)?;
            }
            // Also in shared tables: a later copy of the table must not
            // carry COPIED on clusters it shares.
            let mut t = self.l2_table(l2off)?.clone();
            let mut changed = false;
            for j in 0..g.l2_entries() as usize {
                let e = t[j * step];
                if e & OFLAG_COMPRESSED != 0 || e & L2E_OFFSET_MASK == 0 {
                    continue;
                }
                let rc = self.get_refcount((e & L2E_OFFSET_MASK) >> g.cb)?;
                let ne = if rc == 1 {
                    e | OFLAG_COPIED
                } else {
                    e & !OFLAG_COPIED
                };
                if ne != e {
                    t[j * step] = ne;
                    changed = true;
                }
            }
            if changed {
                self.write_u64_table(l2off, &t, g.cs as usize)?;
                self.l2c.insert(l2off, t);
            }
        }
        Ok(())
    }

    fn find_snapshot(&self, id_or_name: &str) -> Option<usize> {
        self.snapshots
            .iter()
            .position(|s| s.id == id_or_name)
            .or_else(|| self.snapshots.iter().position(|s| s.name == id_or_name))
    }

    pub fn snapshot_create(&mut self, name: &str, size: u64) -> Result<()> {
        let g = self.g;
        if self.snapshots.iter().any(|s| s.name == name) {
            return Err(Error::SnapshotExists(name.to_string()));
        }
        if self.snapshots.len() as u32 >= MAX_SNAPSHOTS {
            return Err(Error::TooLarge {
                what: "snapshot count",
                value: self.snapshots.len() as u64 + 1,
                limit: MAX_SNAPSHOTS as u64,
            });
        }
        if name.len() > u16::MAX as usize {
            return Err(Error::InvalidOption("snapshot name too long".into()));
        }
        let next_id = self
            .snapshots
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        // 1. Count everything reachable once more (refused on overflow).
        let l1 = self.l1.clone();
        let mut counts = Counts::new();
        self.count_l1_refs(&l1, &mut counts)?;
        self.apply_counts(&counts, 1)?;
        // 2. Copy the L1 table, without COPIED flags.
        let l1_bytes = (l1.len() as u64 * 8).max(1);
        let n = l1_bytes.div_ceil(g.cs);
        let copy: Vec<u64> = l1.iter().map(|e| e & !OFLAG_COPIED).collect();
        let l1_off = self.alloc_clusters(n)?;
        self.write_u64_table(l1_off, &copy, (n * g.cs) as usize)?;
        // 3. Everything is shared now: clear COPIED in the active tables.
        self.rebuild_copied_flags()?;
        // 4. Publish the snapshot.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut list = self.snapshots.clone();
        list.push(Snapshot {
            l1_offset: l1_off,
            l1_size: l1.len() as u32,
            id: next_id.to_string(),
            name: name.to_string(),
            date_sec: now.as_secs() as u32,
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: Some(size),
            icount: None,
            extra_rest: Vec::new(),
        });
        self.write_snapshot_table(list)?;
        self.file.sync_data().map_err(|e| io_err(&self.path, e))
    }

    /// Reverts to a snapshot; returns the virtual size it had.
    pub fn snapshot_apply(&mut self, id_or_name: &str) -> Result<u64> {
        let i = self
            .find_snapshot(id_or_name)
            .ok_or_else(|| Error::SnapshotNotFound(id_or_name.to_string()))?;
        let sn = self.snapshots[i].clone();
        let sn_l1 = self.read_u64_table(sn.l1_offset, sn.l1_size as usize)?;
        let sn_l1: Vec<u64> = sn_l1.iter().map(|e| e & !OFLAG_COPIED).collect();
        // 1. References from the snapshot's tree, once more.
        let mut counts = Counts::new();
        self.count_l1_refs(&sn_l1, &mut counts)?;
        self.apply_counts(&counts, 1)?;
        // 2. Make the active L1 the snapshot's.
        self.grow_l1(sn_l1.len() as u64)?;
        let old_l1 = self.l1.clone();
        let mut new_l1 = sn_l1.clone();
        new_l1.resize(self.l1.len(), 0);
        let off = self.h.l1_table_offset;
        self.write_u64_table(off, &new_l1, 0)?;
        self.l1 = new_l1;
        // 3. Drop the references of the old active tree.
        let mut old_counts = Counts::new();
        self.count_l1_refs(&old_l1, &mut old_counts)?;
        self.apply_counts(&old_counts, -1)?;
        // 4. COPIED where we own things alone again.
        self.rebuild_copied_flags()?;
        let size = sn.disk_size.unwrap_or(self.h.size);
        if size != self.h.size {
            self.h.size = size;
            self.pwrite(&size.to_be_bytes(), super::header::OFF_SIZE)?;
        }
        self.ctail = 0;
        self.file.sync_data().map_err(|e| io_err(&self.path, e))?;
        Ok(size)
    }

    pub fn snapshot_delete(&mut self, id_or_name: &str) -> Result<()> {
        let g = self.g;
        let i = self
            .find_snapshot(id_or_name)
            .ok_or_else(|| Error::SnapshotNotFound(id_or_name.to_string()))?;
        let sn = self.snapshots[i].clone();
        let sn_l1 = self.read_u64_table(sn.l1_offset, sn.l1_size as usize)?;
        // 1. Unpublish it (from here on its tree only leaks).
        let mut list = self.snapshots.clone();
        list.remove(i);
        self.write_snapshot_table(list)?;
        // 2. Drop its references and its L1 table.
        let mut counts = Counts::new();
        self.count_l1_refs(&sn_l1, &mut counts)?;
        self.apply_counts(&counts, -1)?;
        let n = (sn.l1_size as u64 * 8).max(1).div_ceil(g.cs);
        self.decref(sn.l1_offset >> g.cb, n)?;
        // 3. Clusters we share with nobody now get COPIED back.
        self.rebuild_copied_flags()?;
        self.file.sync_data().map_err(|e| io_err(&self.path, e))
    }
}
