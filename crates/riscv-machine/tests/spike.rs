//! The spike board with our own bare-metal programs (built here with the
//! riscv64 cross compiler): traps and delegation, Sv39, interrupts, SMP with
//! atomics and IPIs. Each program was also run under
//! `qemu-system-riscv64 -M spike -bios none` and passes there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use riscv_machine::machine::{run, BoardKind, Firmware, MachineConfig};
use riscv_machine::power::StopReason;

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/baremetal");

fn programs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vk-baremetal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for p in ["hello", "exitcode", "traps", "sv39", "irq", "smp"] {
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
                .arg(dir.join(format!("{p}.elf")))
                .arg(format!("{SRC}/crt.S"))
                .arg(format!("{SRC}/{p}.c"))
                .output()
                .expect("riscv64-linux-gnu-gcc (gcc-riscv64-linux-gnu) is installed");
            assert!(
                out.status.success(),
                "building {p}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
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

fn spike(program: &str, harts: usize) -> (StopReason, String) {
    let path = programs().join(format!("{program}.elf"));
    let sink = Sink::default();
    let out = run(MachineConfig {
        board: BoardKind::Spike,
        harts,
        mem_size: 64 << 20,
        kernel_name: path.display().to_string(),
        kernel: std::fs::read(&path).unwrap().into(),
        initrd: None,
        append: String::new(),
        firmware: Firmware::Builtin,
        disks: vec![],
        rng: false,
        virtio_console: false,
        nics: vec![],
        output: Box::new(sink.clone()),
        input: None,
        timeout: Some(std::time::Duration::from_secs(60)),
        jit: true,
    })
    .unwrap();
    let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    (out.reason, text)
}

#[test]
fn htif_console_and_exit_status() {
    assert_eq!(
        spike("hello", 1),
        (
            StopReason::PowerOff(0),
            "hello from M-mode on hart 0\n".into()
        )
    );
    assert_eq!(spike("exitcode", 1).0, StopReason::PowerOff(42));
}

#[test]
fn traps_and_delegation() {
    assert_eq!(
        spike("traps", 1),
        (StopReason::PowerOff(0), "traps: ok\n".into())
    );
}

#[test]
fn sv39_translation_faults_and_sfence() {
    assert_eq!(
        spike("sv39", 1),
        (StopReason::PowerOff(0), "sv39: ok\n".into())
    );
}

#[test]
fn timer_software_and_delegated_interrupts() {
    assert_eq!(
        spike("irq", 1),
        (StopReason::PowerOff(0), "irq: ok\n".into())
    );
}

#[test]
fn four_harts_with_atomics_and_ipis() {
    for _ in 0..3 {
        assert_eq!(
            spike("smp", 4),
            (StopReason::PowerOff(0), "smp: ok\n".into())
        );
    }
}

#[test]
fn foreign_programs_are_refused() {
    let err = run(MachineConfig {
        board: BoardKind::Spike,
        harts: 1,
        mem_size: 64 << 20,
        kernel_name: "/bin/true".into(),
        kernel: std::fs::read("/bin/true").unwrap().into(),
        initrd: None,
        append: String::new(),
        firmware: Firmware::Builtin,
        disks: vec![],
        rng: false,
        virtio_console: false,
        nics: vec![],
        output: Box::new(std::io::sink()),
        input: None,
        timeout: Some(std::time::Duration::from_secs(60)),
        jit: true,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("x86-64"), "{err}");
}
