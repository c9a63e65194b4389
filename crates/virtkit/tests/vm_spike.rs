//! `virtkit vm run --machine spike`: our own bare-metal programs (built
//! here with the riscv64 cross compiler) prove the privileged architecture:
//! traps and delegation, Sv39, interrupts, SMP with IPIs. Each program was
//! also checked against `qemu-system-riscv64 -M spike -bios none`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const SRC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../riscv-machine/tests/baremetal"
);

/// Builds every program once per test process.
fn programs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("virtkit-baremetal-{}", std::process::id()));
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

fn spike(program: &str, cpus: u32) -> Output {
    let elf = programs().join(format!("{program}.elf"));
    Command::new(env!("CARGO_BIN_EXE_virtkit"))
        .args([
            "vm",
            "run",
            "--arch",
            "riscv64",
            "--machine",
            "spike",
            "--mem",
            "64M",
        ])
        .arg("--cpus")
        .arg(cpus.to_string())
        .arg("--kernel")
        .arg(elf)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn htif_console_and_exit_status() {
    let o = spike("hello", 1);
    assert_eq!(stdout(&o), "hello from M-mode on hart 0\n");
    assert_eq!(o.status.code(), Some(0));
    let o = spike("exitcode", 1);
    assert_eq!(o.status.code(), Some(42), "{o:?}");
}

#[test]
fn traps_and_delegation() {
    let o = spike("traps", 1);
    assert_eq!(stdout(&o), "traps: ok\n", "{o:?}");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn sv39_translation_faults_and_sfence() {
    let o = spike("sv39", 1);
    assert_eq!(stdout(&o), "sv39: ok\n", "{o:?}");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn timer_software_and_delegated_interrupts() {
    let o = spike("irq", 1);
    assert_eq!(stdout(&o), "irq: ok\n", "{o:?}");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn four_harts_with_atomics_and_ipis() {
    let o = spike("smp", 4);
    assert_eq!(stdout(&o), "smp: ok\n", "{o:?}");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn bad_programs_are_refused_clearly() {
    // An x86-64 ELF (the host's own busybox or true).
    let o = Command::new(env!("CARGO_BIN_EXE_virtkit"))
        .args(["vm", "run", "--machine", "spike", "--kernel", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("x86-64"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_virtkit"))
        .args([
            "vm",
            "run",
            "--machine",
            "spike",
            "--kernel",
            "/nonexistent.elf",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent.elf"), "{err}");
}
