//! Snapshots of the spike board with a bare-metal program (fast, no Linux):
//! pause mid-loop, snapshot, let the original finish, restore twice; the
//! restored runs print exactly the original's continuation. Also the
//! refusals: a different machine, a corrupt or foreign state file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use riscv_machine::machine::{restore, start, BoardKind, Firmware, MachineConfig, MachineError};
use riscv_machine::power::StopReason;

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/baremetal");

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("vk-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn build_counter(dir: &Path) -> PathBuf {
    let elf = dir.join("counter.elf");
    let out = Command::new("riscv64-linux-gnu-gcc")
        .args([
            "-nostdlib",
            "-static",
            "-march=rv64gc",
            "-mabi=lp64d",
            "-mcmodel=medany",
            "-O2",
            "-ffreestanding",
            "-fno-pic",
            "-no-pie",
            "-Wl,--build-id=none",
            "-T",
        ])
        .arg(format!("{SRC}/link.ld"))
        .arg("-o")
        .arg(&elf)
        .arg(format!("{SRC}/crt.S"))
        .arg(format!("{SRC}/counter.c"))
        .output()
        .expect("riscv64-linux-gnu-gcc (gcc-riscv64-linux-gnu) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    elf
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Sink {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

fn config(elf: &Path, harts: usize, board: BoardKind, out: &Sink) -> MachineConfig {
    MachineConfig {
        board,
        harts,
        mem_size: 64 << 20,
        kernel_name: elf.display().to_string(),
        kernel: std::fs::read(elf).unwrap().into(),
        initrd: None,
        append: String::new(),
        firmware: Firmware::Builtin,
        disks: vec![],
        rng: false,
        virtio_console: false,
        nics: vec![],
        output: Box::new(out.clone()),
        input: None,
        timeout: Some(Duration::from_secs(300)),
        jit: true,
    }
}

#[test]
fn spike_program_restores_to_the_same_continuation() {
    let dir = tmpdir();
    let elf = build_counter(&dir);
    let (state, memory) = (dir.join("state"), dir.join("memory"));

    let out = Sink::default();
    let m = start(config(&elf, 2, BoardKind::Spike, &out)).unwrap();
    let mark = b"n=0x000000000000000a ";
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.bytes().windows(mark.len()).any(|w| w == mark) {
        assert!(
            m.stopped().is_none(),
            "stopped ({:?}) before the mark: {}",
            m.stopped(),
            String::from_utf8_lossy(&out.bytes())
        );
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    m.pause().unwrap();
    let at = out.bytes().len();
    m.snapshot(&state, &memory).unwrap();
    m.resume().unwrap();
    assert_eq!(m.wait().unwrap().reason, StopReason::PowerOff(0));
    let all = out.bytes();
    let rest = all[at..].to_vec();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("n=0x00000000000007cf "), "{text}");

    for run in 0..2 {
        let out2 = Sink::default();
        let r = restore(config(&elf, 2, BoardKind::Spike, &out2), &state, &memory).unwrap();
        assert_eq!(r.wait().unwrap().reason, StopReason::PowerOff(0));
        assert!(
            out2.bytes() == rest,
            "restore {run} differs from the original's continuation:\n{}\n---\n{}",
            String::from_utf8_lossy(&out2.bytes()),
            text
        );
    }

    // Another machine: refused before anything runs, with what differs.
    let out3 = Sink::default();
    let e = restore(config(&elf, 1, BoardKind::Spike, &out3), &state, &memory)
        .err()
        .unwrap();
    assert!(matches!(e, MachineError::SnapshotMismatch(_)), "{e}");
    assert!(e.to_string().contains("2 harts"), "{e}");
    let e = restore(config(&elf, 2, BoardKind::Virt, &out3), &state, &memory)
        .err()
        .unwrap();
    assert!(e.to_string().contains("riscv64-spike"), "{e}");
    // A memory file of another size.
    let short = dir.join("short");
    std::fs::write(&short, [0u8; 4096]).unwrap();
    let e = restore(config(&elf, 2, BoardKind::Spike, &out3), &state, &short)
        .err()
        .unwrap();
    assert!(e.to_string().contains("4096 bytes"), "{e}");
    // A foreign file, a truncated one.
    let e = restore(config(&elf, 2, BoardKind::Spike, &out3), &elf, &memory)
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a virtkit snapshot"), "{e}");
    let bytes = std::fs::read(&state).unwrap();
    let cut = dir.join("cut");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = restore(config(&elf, 2, BoardKind::Spike, &out3), &cut, &memory)
        .err()
        .unwrap();
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(out3.bytes().is_empty());

    // Pausing twice, resuming twice: harmless. Snapshot while running: refused.
    let out4 = Sink::default();
    let m = start(config(&elf, 2, BoardKind::Spike, &out4)).unwrap();
    m.pause().unwrap();
    m.pause().unwrap();
    m.resume().unwrap();
    m.resume().unwrap();
    let e = m.snapshot(&dir.join("s2"), &dir.join("m2"));
    assert!(
        matches!(e, Err(MachineError::NotPaused)) || m.stopped().is_some(),
        "{e:?}"
    );
    assert_eq!(m.wait().unwrap().reason, StopReason::PowerOff(0));
    let full = out4.bytes();
    assert!(
        full.ends_with(&rest),
        "a paused and resumed run prints the same"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
