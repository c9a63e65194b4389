//! Internal snapshots: the snapshot table, and create/apply/delete with the
//! refcount and COPIED-flag bookkeeping QEMU does.

use std::collections::HashSet;

use super::header::{l1_entries_for, MAX_L1_BYTES, MAX_SNAPSHOTS, MAX_VIRTUAL_SIZE};
use super::switch::Target;
use super::{be64_at, Meta, L1E_OFFSET_MASK, OFLAG_COPIED};
use crate::io::sync_data;
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
            // Past the end of the file the table reads as zeros (as in
            // QEMU, whose check then counts the overrun); only its size is
            // bounded.
            if off + 40 > table_end_limit {
                return Err(self.corrupt(format!(
                    "snapshot table entry {i} lies beyond {MAX_SNAPSHOT_TABLE} bytes of snapshot table"
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

    pub(super) fn snapshot_table_bytes(list: &[Snapshot]) -> Vec<u8> {
        let mut b = Vec::new();
        for s in list {
            s.serialize(&mut b);
        }
        b
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // The snapshot keeps the current L1 table and L2 tables; the active
        // state gets a new L1 table and copies of the tables it owned (their
        // COPIED flags go), all switched in at once.
        let mut list = self.snapshots.clone();
        list.push(Snapshot {
            l1_offset: self.h.l1_table_offset,
            l1_size: self.l1.len() as u32,
            id: next_id.to_string(),
            name: name.to_string(),
            date_sec: now.as_secs() as u32,
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: Some(size),
            // qemu-img records the instruction count of a VM that was not
            // running (no record/replay) as 0, not as "absent".
            icount: Some(0),
            extra_rest: Vec::new(),
        });
        let old_l1 = self.l1.clone();
        self.switch_to(
            Target {
                l1: old_l1.clone(),
                snapshots: list,
                size: self.h.size,
            },
            true,
        )?;
        // The snapshot's own tables still carry the COPIED flags of when
        // they were active; only the active tree's flags matter to
        // readers and to check, but clear them so that applying this
        // snapshot later finds them exact and need not copy them. A crash
        // here is harmless for the same reason.
        let active: HashSet<u64> = self.l1.iter().map(|e| e & L1E_OFFSET_MASK).collect();
        let step = g.step();
        for e in old_l1 {
            let l2off = e & L1E_OFFSET_MASK;
            if l2off == 0 || active.contains(&l2off) {
                continue;
            }
            let mut t = self.l2_table(l2off)?.clone();
            let mut changed = false;
            for j in 0..g.l2_entries() as usize {
                if t[j * step] & OFLAG_COPIED != 0 {
                    t[j * step] &= !OFLAG_COPIED;
                    changed = true;
                }
            }
            if changed {
                self.write_u64_table(l2off, &t, g.cs as usize)?;
                self.l2c.insert(l2off, t);
            }
        }
        sync_data(&self.file, &self.path)
    }

    /// Reverts to a snapshot; returns the virtual size it had.
    pub fn snapshot_apply(&mut self, id_or_name: &str) -> Result<u64> {
        let i = self
            .find_snapshot(id_or_name)
            .ok_or_else(|| Error::SnapshotNotFound(id_or_name.to_string()))?;
        let sn = self.snapshots[i].clone();
        let size = sn.disk_size.unwrap_or(self.h.size);
        let mut l1 = self.read_u64_table(sn.l1_offset, sn.l1_size as usize)?;
        // The size comes from the snapshot's extra data: check it before
        // sizing a table by it.
        if size > MAX_VIRTUAL_SIZE {
            return Err(self.corrupt(format!(
                "snapshot '{}' has an invalid disk size {size}",
                sn.name
            )));
        }
        let len = (self.l1.len() as u64)
            .max(l1.len() as u64)
            .max(l1_entries_for(size, self.g.cb, self.g.ext));
        if len * 8 > MAX_L1_BYTES {
            return Err(Error::TooLarge {
                what: "L1 table",
                value: len * 8,
                limit: MAX_L1_BYTES,
            });
        }
        l1.resize(len as usize, 0);
        let snapshots = self.snapshots.clone();
        self.switch_to(
            Target {
                l1,
                snapshots,
                size,
            },
            true,
        )?;
        Ok(size)
    }

    pub fn snapshot_delete(&mut self, id_or_name: &str) -> Result<()> {
        let i = self
            .find_snapshot(id_or_name)
            .ok_or_else(|| Error::SnapshotNotFound(id_or_name.to_string()))?;
        let mut snapshots = self.snapshots.clone();
        snapshots.remove(i);
        let l1 = self.l1.clone();
        let size = self.h.size;
        self.switch_to(
            Target {
                l1,
                snapshots,
                size,
            },
            true,
        )
    }
}
