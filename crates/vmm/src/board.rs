//! What both boards (the riscv64 emulator's and the x86-64 KVM one) keep
//! of their disks and their configuration for snapshots:
//!
//! - [`Disk`]: a disk on a virtio-blk slot, with the image file behind it
//!   when there is one;
//! - [`MachineSummary`]: the machine a snapshot was taken of, which a
//!   restore target must match ([`MachineSummary::mismatch`] says how it
//!   differs, in words, before anything is built);
//! - the disks' part of a snapshot: a qcow2 internal snapshot of each
//!   read-write disk taken with the machine's state ([`snapshot_disks`]),
//!   reverted on restore ([`revert_disks`]). A read-write disk of any other
//!   kind is refused at snapshot time ([`unsnapshottable_disk`]): its
//!   contents of that moment could not be given back.

use std::sync::Arc;

use image::{BlockBackend, Image};
use serde::{Deserialize, Serialize};

/// A disk on a virtio-blk slot. Clones share the open image.
#[derive(Clone)]
pub struct Disk {
    pub backend: Arc<dyn BlockBackend>,
    pub read_only: bool,
    /// The image file behind `backend`, if it is one (see
    /// [`Disk::from_image`]): snapshots take a qcow2 internal snapshot of
    /// it, restores revert it. Without it, only a read-only disk can be
    /// part of a snapshot.
    pub image: Option<Arc<Image>>,
}

impl Disk {
    /// A disk over any backend (snapshots only if it is read-only).
    pub fn new(backend: Arc<dyn BlockBackend>, read_only: bool) -> Disk {
        Disk {
            backend,
            read_only,
            image: None,
        }
    }

    /// A disk over an image file (owned or shared): a qcow2 image can be
    /// snapshotted with the machine.
    pub fn from_image(image: impl Into<Arc<Image>>, read_only: bool) -> Disk {
        let image = image.into();
        Disk {
            backend: image.clone(),
            read_only,
            image: Some(image),
        }
    }

    /// Whether the guest can change what the disk holds (an empty drive,
    /// with no medium, holds nothing).
    pub fn writable(&self) -> bool {
        !self.read_only && !self.backend.is_read_only() && !self.backend.is_empty()
    }
}

/// The machine configuration a snapshot was taken of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSummary {
    /// The board's name: "riscv64-virt", "riscv64-spike", "x86_64-kvm".
    pub board: String,
    /// vCPUs (harts on riscv64; state files written before the boards
    /// shared this type name them so).
    #[serde(alias = "harts")]
    pub vcpus: usize,
    /// RAM size in bytes (page aligned).
    pub mem_size: u64,
    /// On the riscv64 boards: whether the kernel runs on the board's
    /// built-in SBI (no firmware in M-mode). `None` on boards without the
    /// choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin_sbi: Option<bool>,
    /// The device in each virtio slot: "block", "rng", "console", "net".
    pub devices: Vec<String>,
    /// Each disk's size in bytes, in slot order (0: an empty drive).
    pub disk_sizes: Vec<u64>,
}

impl MachineSummary {
    /// What the board calls its CPUs in messages: harts on RISC-V.
    fn cpus_word(&self) -> &'static str {
        if self.board.starts_with("riscv") {
            "harts"
        } else {
            "vCPUs"
        }
    }

    /// What differs between the snapshot's machine (`self`) and the one it
    /// is restored into, in words; `None` if they match.
    pub fn mismatch(&self, target: &MachineSummary) -> Option<String> {
        if self.board != target.board {
            return Some(format!(
                "the snapshot is of a {} machine, not {}",
                self.board, target.board
            ));
        }
        if self.vcpus != target.vcpus {
            return Some(format!(
                "the snapshot has {} {}, the machine {} (use --cpus {})",
                self.vcpus,
                self.cpus_word(),
                target.vcpus,
                self.vcpus
            ));
        }
        if self.mem_size != target.mem_size {
            return Some(format!(
                "the snapshot has {} MiB of RAM, the machine {} MiB (use --mem {}M)",
                self.mem_size >> 20,
                target.mem_size >> 20,
                self.mem_size >> 20
            ));
        }
        if self.builtin_sbi != target.builtin_sbi {
            let name = |b: Option<bool>| match b {
                Some(true) => "the built-in SBI",
                Some(false) => "a firmware file",
                None => "neither SBI nor firmware",
            };
            return Some(format!(
                "the snapshot ran {}, the machine {}",
                name(self.builtin_sbi),
                name(target.builtin_sbi)
            ));
        }
        if self.devices != target.devices {
            return Some(format!(
                "the snapshot's virtio devices are [{}], the machine's [{}]",
                self.devices.join(", "),
                target.devices.join(", ")
            ));
        }
        for (i, (a, b)) in self.disk_sizes.iter().zip(&target.disk_sizes).enumerate() {
            // A drive that was empty (size 0) takes any medium: the guest
            // is told of its capacity on restore.
            if a != b && *a != 0 {
                return Some(format!("disk {i} has {b} bytes, the snapshot's had {a}"));
            }
        }
        None
    }
}

/// A qcow2 disk's internal snapshot taken at the same instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSnapshot {
    /// Disk index (in the machine configuration's order).
    pub disk: usize,
    /// Name of the internal snapshot in that qcow2 image.
    pub name: String,
}

/// Why the disks' part of a snapshot or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskSnapshotError {
    /// An image operation failed (flush, create or apply a snapshot).
    #[error("disk {index}: {what}: {source}")]
    Image {
        index: usize,
        what: String,
        #[source]
        source: image::Error,
    },
    /// The disks given do not fit the snapshot's.
    #[error("{0}")]
    Mismatch(String),
}

/// The first read-write disk a snapshot could not hold (one that is not a
/// qcow2 image), if any.
pub fn unsnapshottable_disk(disks: &[Disk]) -> Option<usize> {
    disks.iter().position(|d| {
        let qcow2 = d
            .image
            .as_ref()
            .is_some_and(|i| i.format() == image::Format::Qcow2);
        d.writable() && !qcow2
    })
}

/// Takes an internal snapshot of each read-write qcow2 disk (flushed
/// first), all with the same name, and returns them; on a failure, deletes
/// the ones it took.
pub fn snapshot_disks(disks: &[Disk]) -> Result<Vec<DiskSnapshot>, DiskSnapshotError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "virtkit-{}.{:09}-{}",
        stamp.as_secs(),
        stamp.subsec_nanos(),
        std::process::id()
    );
    let mut taken = Vec::new();
    for (index, d) in disks.iter().enumerate() {
        let Some(img) = d.image.as_ref().filter(|_| d.writable()) else {
            continue;
        };
        let fail = |what: &str| {
            let what = what.to_string();
            move |source| DiskSnapshotError::Image {
                index,
                what,
                source,
            }
        };
        let r = d
            .backend
            .flush()
            .map_err(fail("cannot flush"))
            .and_then(|()| {
                img.snapshot_create(&name)
                    .map_err(fail("cannot take an internal snapshot"))
            });
        if let Err(e) = r {
            delete_disk_snapshots(disks, &taken);
            return Err(e);
        }
        taken.push(DiskSnapshot {
            disk: index,
            name: name.clone(),
        });
    }
    Ok(taken)
}

/// Deletes internal snapshots [`snapshot_disks`] took (a snapshot that
/// failed later leaves none behind). Best effort: a failure here would
/// only leave an unused internal snapshot.
pub fn delete_disk_snapshots(disks: &[Disk], snaps: &[DiskSnapshot]) {
    for s in snaps {
        if let Some(img) = disks.get(s.disk).and_then(|d| d.image.as_ref()) {
            let _ = img.snapshot_delete(&s.name);
        }
    }
}

/// Reverts each qcow2 disk to its internal snapshot; a read-write disk
/// the snapshot did not cover is refused (its contents may not be what
/// the restored guest believes), unless its drive was empty then (the
/// guest believes nothing of it). `saved_sizes` are the snapshot's disk
/// sizes, checked against the disks before ([`MachineSummary::mismatch`]).
pub fn revert_disks(
    disks: &[Disk],
    snaps: &[DiskSnapshot],
    saved_sizes: &[u64],
) -> Result<(), DiskSnapshotError> {
    if let Some(s) = snaps.iter().find(|s| s.disk >= disks.len()) {
        return Err(DiskSnapshotError::Mismatch(format!(
            "a disk snapshot names disk {}, which does not exist",
            s.disk
        )));
    }
    for (index, d) in disks.iter().enumerate() {
        let snap = snaps.iter().find(|s| s.disk == index);
        let was_empty = saved_sizes.get(index) == Some(&0);
        match (snap, &d.image) {
            (None, _) if was_empty => {}
            (Some(s), Some(img)) => {
                img.snapshot_apply(&s.name)
                    .map_err(|source| DiskSnapshotError::Image {
                        index,
                        what: format!("cannot revert to internal snapshot {}", s.name),
                        source,
                    })?;
            }
            (Some(s), None) => {
                return Err(DiskSnapshotError::Mismatch(format!(
                    "disk {index} must be the qcow2 image holding internal snapshot {}",
                    s.name
                )))
            }
            (None, _) if d.writable() => {
                return Err(DiskSnapshotError::Mismatch(format!(
                    "disk {index} is read-write but the snapshot holds no copy of it: attach it read-only"
                )))
            }
            (None, _) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> MachineSummary {
        MachineSummary {
            board: "riscv64-virt".into(),
            vcpus: 2,
            mem_size: 256 << 20,
            builtin_sbi: Some(true),
            devices: vec!["block".into(), "rng".into()],
            disk_sizes: vec![1 << 30],
        }
    }

    #[test]
    fn mismatches_are_named() {
        let a = summary();
        assert_eq!(a.mismatch(&summary()), None);
        let mut b = summary();
        b.board = "x86_64-kvm".into();
        assert!(a.mismatch(&b).unwrap().contains("x86_64-kvm"));
        let mut b = summary();
        b.vcpus = 4;
        assert!(a.mismatch(&b).unwrap().contains("2 harts"));
        let (mut x, mut y) = (summary(), summary());
        (x.board, y.board, y.vcpus) = ("x86_64-kvm".into(), "x86_64-kvm".into(), 1);
        assert!(x.mismatch(&y).unwrap().contains("2 vCPUs, the machine 1"));
        let mut b = summary();
        b.mem_size = 512 << 20;
        assert!(a.mismatch(&b).unwrap().contains("256 MiB"));
        let mut b = summary();
        b.devices.pop();
        assert!(a.mismatch(&b).unwrap().contains("block, rng"));
        let mut b = summary();
        b.disk_sizes[0] = 4096;
        assert!(a.mismatch(&b).unwrap().contains("disk 0"));
        let mut a0 = summary();
        a0.disk_sizes[0] = 0;
        assert_eq!(a0.mismatch(&summary()), None, "a medium in an empty drive");
        assert!(summary().mismatch(&a0).unwrap().contains("disk 0"));
        let mut b = summary();
        b.builtin_sbi = Some(false);
        assert!(a.mismatch(&b).unwrap().contains("firmware"));
    }

    #[test]
    fn both_boards_older_summaries_still_read() {
        let riscv: MachineSummary = serde_json::from_str(
            r#"{"board": "riscv64-virt", "harts": 2, "mem_size": 268435456,
                "builtin_sbi": true, "devices": ["block", "rng"], "disk_sizes": [1073741824]}"#,
        )
        .unwrap();
        assert_eq!(riscv, summary());
        let x86: MachineSummary = serde_json::from_str(
            r#"{"board": "x86_64-kvm", "vcpus": 1, "mem_size": 16777216,
                "devices": [], "disk_sizes": []}"#,
        )
        .unwrap();
        assert_eq!((x86.vcpus, x86.builtin_sbi), (1, None));
        // The board-less field stays out of an x86 state file.
        let json = serde_json::to_string(&x86).unwrap();
        assert!(!json.contains("builtin_sbi"), "{json}");
        assert!(serde_json::from_str::<MachineSummary>(
            r#"{"board": "x", "vcpus": 1, "mem_size": 0, "devices": [], "disk_sizes": [], "extra": 1}"#
        )
        .is_err());
    }

    #[test]
    fn disks_snapshot_and_revert() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.qcow2");
        image::create(
            &path,
            &image::CreateOptions {
                format: image::Format::Qcow2,
                size: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap();
        let open = |p: &std::path::Path, read_only: bool| {
            let o = image::OpenOptions {
                read_only,
                ..Default::default()
            };
            image::open(p, &o).unwrap()
        };
        let qcow = Disk::from_image(open(&path, false), false);
        let raw_path = dir.path().join("d.raw");
        std::fs::write(&raw_path, vec![0u8; 1 << 16]).unwrap();
        let raw = Disk::from_image(Arc::new(open(&raw_path, false)), false);
        assert_eq!(unsnapshottable_disk(&[qcow.clone(), raw]), Some(1));
        let raw_ro = Disk::from_image(open(&raw_path, true), true);
        let disks = [qcow.clone(), raw_ro];
        assert_eq!(unsnapshottable_disk(&disks), None);

        qcow.backend.write_at(b"before", 0).unwrap();
        let snaps = snapshot_disks(&disks).unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].disk, 0);
        qcow.backend.write_at(b"after!", 0).unwrap();
        revert_disks(&disks, &snaps, &[1 << 20, 1 << 16]).unwrap();
        let mut buf = [0u8; 6];
        qcow.backend.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"before");

        // A writable disk the snapshot did not cover, a snapshot of a disk
        // that is not there: refused.
        let e = revert_disks(std::slice::from_ref(&qcow), &[], &[1 << 20]).unwrap_err();
        assert!(e.to_string().contains("read-write"), "{e}");
        let far = DiskSnapshot {
            disk: 3,
            name: snaps[0].name.clone(),
        };
        let e = revert_disks(&disks, &[far], &[1 << 20, 1 << 16]).unwrap_err();
        assert!(e.to_string().contains("disk 3"), "{e}");
        delete_disk_snapshots(&disks, &snaps);
        let e = revert_disks(&disks, &snaps, &[1 << 20, 1 << 16]).unwrap_err();
        assert!(
            matches!(e, DiskSnapshotError::Image { index: 0, .. }),
            "{e}"
        );
    }
}
