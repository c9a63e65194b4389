//! Machine snapshots with Debian's riscv64 kernel, through the library
//! entry points the CLI and the control API use
//! (`riscv_machine::machine::{start, restore}`): a guest in the middle of
//! work is paused and snapshotted; the original finishes; two restores of
//! the snapshot print exactly the original's continuation. And a qcow2
//! disk rolls back with the machine.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use riscv_machine::machine::{
    restore, start, BoardKind, Disk, Firmware, MachineConfig, MachineError, RunningMachine,
};
use riscv_machine::power::StopReason;

/// Guest output, shared with the test.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
    /// Waits until the output contains `what` (the deadline is a hang
    /// guard, not a timing check).
    fn wait_for(&self, m: &RunningMachine, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !self.text().contains(what) {
            assert!(
                m.stopped().is_none(),
                "the guest stopped ({:?}) before printing {what:?}:\n{}",
                m.stopped(),
                self.text()
            );
            assert!(
                Instant::now() < deadline,
                "no {what:?} in:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vk-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Assets {
    kernel: Vec<u8>,
    kernel_name: String,
    initramfs: PathBuf,
}

fn assets() -> Assets {
    let a = guest::default_riscv64().unwrap();
    Assets {
        kernel: std::fs::read(&a.kernel).unwrap(),
        kernel_name: a.kernel.display().to_string(),
        initramfs: a.initramfs,
    }
}

fn config(a: &Assets, script: &str, disk: Disk, out: &Buf, input: Option<i32>) -> MachineConfig {
    let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    MachineConfig {
        board: BoardKind::Virt,
        harts: 2,
        mem_size: 256 << 20,
        kernel_name: a.kernel_name.clone(),
        kernel: a.kernel.clone().into(),
        initrd: Some(guest::run_initramfs(&a.initramfs, &argv).unwrap().into()),
        append: "console=ttyS0 panic=-1 quiet".into(),
        firmware: Firmware::Builtin,
        disks: vec![disk],
        rng: true,
        virtio_console: true,
        nics: Vec::new(),
        output: Box::new(out.clone()),
        input,
        jit: true,
        timeout: Some(Duration::from_secs(900)),
    }
}

fn open_disk(path: &Path, read_only: bool) -> Disk {
    let opts = image::OpenOptions {
        read_only,
        sharing: image::Sharing::Device,
        ..Default::default()
    };
    Disk::from_image(image::open(path, &opts).unwrap(), read_only)
}

fn sha256_hex(path: &Path) -> String {
    let o = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A loop printing a counter, with deterministic busy work between lines
/// (so the snapshot lands mid-loop), then the disk's sha256: the output
/// depends on nothing but the guest's state, never on timer interrupts.
const COUNTER: &str = "i=0; while [ $i -lt 400 ]; do j=0; \
    while [ $j -lt 300 ]; do j=$((j+1)); done; \
    echo \"count $i\"; i=$((i+1)); done; \
    sha256sum /dev/vda; echo finished";

#[test]
fn restored_guests_print_exactly_the_originals_continuation() {
    let a = assets();
    let dir = tmpdir("counter");
    let disk_path = dir.join("data.raw");
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&disk_path, &data).unwrap();
    let sum = sha256_hex(&disk_path);
    let (state, memory) = (dir.join("state"), dir.join("memory"));

    let out = Buf::default();
    let m = start(config(&a, COUNTER, open_disk(&disk_path, true), &out, None)).unwrap();
    // The guest tty turns \n into \r\n.
    out.wait_for(&m, "count 20\r");
    m.pause().unwrap();
    assert!(m.is_paused());
    let at = out.bytes().len();
    m.snapshot(&state, &memory).unwrap();
    // Paused means paused: nothing more is printed.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(out.bytes().len(), at, "output while paused");
    m.resume().unwrap();
    let outcome = m.wait().unwrap();
    assert_eq!(outcome.reason, StopReason::PowerOff(0), "{}", out.text());
    let all = out.bytes();
    let rest = &all[at..];
    let rest_text = String::from_utf8_lossy(rest);
    assert!(rest_text.contains("count 399\r"), "{rest_text}");
    assert!(
        rest_text.contains(&sum),
        "disk sha256 {sum} in:\n{rest_text}"
    );
    assert!(
        !rest_text.contains("count 20\r"),
        "the snapshot was taken after count 20"
    );

    for run in 0..2 {
        let out2 = Buf::default();
        let r = restore(
            config(&a, COUNTER, open_disk(&disk_path, true), &out2, None),
            &state,
            &memory,
        )
        .unwrap();
        let outcome = r.wait().unwrap();
        assert_eq!(outcome.reason, StopReason::PowerOff(0), "restore {run}");
        assert_eq!(
            String::from_utf8_lossy(&out2.bytes()),
            rest_text,
            "restore {run} printed something else than the original's continuation"
        );
    }

    // A restore into a different machine is refused before anything runs.
    let out3 = Buf::default();
    let mut cfg = config(&a, COUNTER, open_disk(&disk_path, true), &out3, None);
    cfg.harts = 1;
    let e = restore(cfg, &state, &memory).err().unwrap();
    assert!(matches!(e, MachineError::SnapshotMismatch(_)), "{e}");
    assert!(e.to_string().contains("2 harts"), "{e}");
    let mut cfg = config(&a, COUNTER, open_disk(&disk_path, true), &out3, None);
    cfg.mem_size = 512 << 20;
    let e = restore(cfg, &state, &memory).err().unwrap();
    assert!(e.to_string().contains("256 MiB"), "{e}");
    // A corrupt state file: a clear error, nothing started.
    let mut bytes = std::fs::read(&state).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 1;
    let bad = dir.join("bad-state");
    std::fs::write(&bad, &bytes).unwrap();
    let cfg = config(&a, COUNTER, open_disk(&disk_path, true), &out3, None);
    let e = restore(cfg, &bad, &memory).err().unwrap();
    assert!(e.to_string().contains("checksum"), "{e}");
    assert!(out3.bytes().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_raw_read_write_disk_refuses_a_snapshot() {
    let a = assets();
    let dir = tmpdir("rawrw");
    let disk_path = dir.join("rw.raw");
    std::fs::write(&disk_path, vec![0u8; 1 << 20]).unwrap();
    let out = Buf::default();
    let m = start(config(
        &a,
        "echo up; sleep 600",
        open_disk(&disk_path, false),
        &out,
        None,
    ))
    .unwrap();
    assert!(matches!(
        m.snapshot(&dir.join("s"), &dir.join("m")),
        Err(MachineError::NotPaused)
    ));
    out.wait_for(&m, "up\r");
    m.pause().unwrap();
    let e = m.snapshot(&dir.join("s"), &dir.join("m")).unwrap_err();
    assert!(
        matches!(e, MachineError::RawDiskSnapshot { index: 0 }),
        "{e}"
    );
    assert!(e.to_string().contains("qcow2"), "{e}");
    assert!(!dir.join("s").exists() && !dir.join("m").exists());
    m.stop(StopReason::Quit);
    assert_eq!(m.wait().unwrap().reason, StopReason::Quit);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Guest side of the rollback test: writes A, says so, waits for a line;
/// "go" writes B; then it prints what the disk holds.
const ROLLBACK: &str = "printf AAAA | dd of=/dev/vda bs=512 seek=0 conv=fsync 2>/dev/null; \
    echo wrote-A; read cmd; \
    if [ \"$cmd\" = go ]; then printf BBBB | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; fi; \
    echo \"sector0=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 4)\"; \
    echo \"sector8=$(dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c 4 | tr -d '\\0')\"; \
    sync; echo end";

fn pipe() -> (OwnedFd, std::fs::File) {
    let (r, w) = std::io::pipe().unwrap();
    (OwnedFd::from(r), std::fs::File::from(OwnedFd::from(w)))
}

#[test]
fn a_qcow2_disk_rolls_back_with_the_machine() {
    let a = assets();
    let dir = tmpdir("rollback");
    let disk_path = dir.join("disk.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk_path)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let (state, memory) = (dir.join("state"), dir.join("memory"));

    let out = Buf::default();
    let (r, mut w) = pipe();
    let m = start(config(
        &a,
        ROLLBACK,
        open_disk(&disk_path, false),
        &out,
        Some(r.as_raw_fd()),
    ))
    .unwrap();
    out.wait_for(&m, "wrote-A");
    m.pause().unwrap();
    m.snapshot(&state, &memory).unwrap();
    m.resume().unwrap();
    w.write_all(b"go\n").unwrap();
    let o = m.wait().unwrap();
    assert_eq!(o.reason, StopReason::PowerOff(0), "{}", out.text());
    let text = out.text();
    assert!(text.contains("sector0=AAAA"), "{text}");
    assert!(text.contains("sector8=BBBB"), "{text}");
    drop((m, r, w));

    let out2 = Buf::default();
    let (r, mut w) = pipe();
    let m = restore(
        config(
            &a,
            ROLLBACK,
            open_disk(&disk_path, false),
            &out2,
            Some(r.as_raw_fd()),
        ),
        &state,
        &memory,
    )
    .unwrap();
    w.write_all(b"look\n").unwrap();
    let o = m.wait().unwrap();
    assert_eq!(o.reason, StopReason::PowerOff(0), "{}", out2.text());
    let text = out2.text();
    assert!(text.contains("sector0=AAAA"), "{text}");
    assert!(
        text.contains("sector8=\r\n") || text.contains("sector8=\n"),
        "B is gone: {text}"
    );
    drop((m, r, w));

    let check = std::process::Command::new("qemu-img")
        .arg("check")
        .arg(&disk_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let snaps = std::process::Command::new("qemu-img")
        .args(["snapshot", "-l"])
        .arg(&disk_path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&snaps.stdout).contains("virtkit-"));
    let _ = std::fs::remove_dir_all(&dir);
}
