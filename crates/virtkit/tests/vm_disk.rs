//! `--disk` of `virtkit vm run` and `virtkit run`: the FILE[,OPTION...]
//! syntax, and QEMU's image locking (one image on two disks of one VM is
//! refused, as `qemu-system-riscv64` refuses it). These fail before the
//! machine starts, so they need no guest.

use std::path::Path;
use std::process::{Command, Output};

fn virtkit(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_virtkit"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("spawn virtkit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    out
}

fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "unexpected success: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn make_qcow2(dir: &Path, name: &str) {
    let out = virtkit(dir, &["img", "create", "-q", "-f", "qcow2", name, "1M"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn unknown_disk_option_is_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    make_qcow2(dir, "d.qcow2");
    // Checked before the kernel is even read.
    let e = failure(&virtkit(
        dir,
        &[
            "vm",
            "run",
            "--kernel",
            "no-such-kernel",
            "--disk",
            "d.qcow2,foo=bar",
        ],
    ));
    assert!(e.contains("unknown option \"foo=bar\""), "{e}");
    assert!(!e.contains("No such file"), "{e}");
    let e = failure(&virtkit(
        dir,
        &[
            "vm",
            "run",
            "--kernel",
            "no-such-kernel",
            "--disk",
            "d.qcow2,readonly=maybe",
        ],
    ));
    assert!(e.contains("readonly=\"maybe\""), "{e}");
    // `virtkit run` parses its disk first too (before fetching a guest).
    let e = failure(&virtkit(
        dir,
        &["run", "--disk", "d.qcow2,foo=bar", "--", "true"],
    ));
    assert!(e.contains("unknown option \"foo=bar\""), "{e}");
}

#[test]
fn comma_in_a_disk_file_name_is_doubled() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    make_qcow2(dir, "a,b.qcow2");
    // The disk opens (twice: the second is refused by the lock of the first,
    // which proves the name was understood).
    let e = failure(&virtkit(
        dir,
        &[
            "vm",
            "run",
            "--kernel",
            "a,b.qcow2",
            "--disk",
            "a,,b.qcow2,format=qcow2",
            "--disk",
            "a,,b.qcow2",
        ],
    ));
    assert!(e.contains("Failed to get \"write\" lock"), "{e}");
    assert!(e.contains("[a,b.qcow2]"), "{e}");
}

#[test]
fn one_image_on_two_disks_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    make_qcow2(dir, "d.qcow2");
    std::fs::write(dir.join("d.raw"), vec![0u8; 1 << 20]).unwrap();
    // The kernel is read before the disks are opened; any file will do, as
    // the run ends at the second disk.
    for disk in ["d.qcow2", "d.raw"] {
        let e = failure(&virtkit(
            dir,
            &[
                "vm", "run", "--kernel", disk, "--disk", disk, "--disk", disk,
            ],
        ));
        assert!(
            e.contains("Failed to get \"write\" lock")
                && e.contains(&format!("Is another process using the image [{disk}]?")),
            "{disk}: {e}"
        );
        // A read-only disk refuses a writer too (QEMU's readonly=on device).
        let ro = format!("{disk},ro");
        let e = failure(&virtkit(
            dir,
            &["vm", "run", "--kernel", disk, "--disk", &ro, "--disk", disk],
        ));
        assert!(e.contains("Failed to get \"write\" lock"), "{disk}: {e}");
    }
}
