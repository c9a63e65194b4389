//! System-mode tests: bare-metal M-mode programs on a small test board
//! (RAM at 0x8000_0000, a finisher, a UART, CLINT mtime/mtimecmp), built
//! with riscv64-linux-gnu-gcc at test time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use riscv::{Bus, Clock, CodeMap, Exit, Hart, HartConfig, HartControl, RamRegion};

const RAM_BASE: u64 = 0x8000_0000;
const RAM_SIZE: u64 = 16 << 20;

struct TestBus {
    _ram: Vec<u64>,
    regions: [RamRegion; 1],
    code: CodeMap,
    clock: Arc<Clock>,
    control: OnceLock<Arc<HartControl>>,
    finish: AtomicU32,
    uart: Mutex<Vec<u8>>,
}

impl TestBus {
    fn new(clock: Arc<Clock>) -> TestBus {
        let mut ram = vec![0u64; (RAM_SIZE / 8) as usize];
        // SAFETY: the Vec outlives the region (both owned by the bus) and is
        // never reallocated.
        let region = unsafe { RamRegion::new(RAM_BASE, RAM_SIZE, ram.as_mut_ptr().cast()) };
        TestBus {
            code: CodeMap::new(&[region]),
            _ram: ram,
            regions: [region],
            clock,
            control: OnceLock::new(),
            finish: AtomicU32::new(0),
            uart: Mutex::new(Vec::new()),
        }
    }

    fn load_elf(&self, elf: &[u8]) -> u64 {
        let u16le = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
        let u32le = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
        let u64le = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
        let (phoff, phnum) = (u64le(32) as usize, u16le(56) as usize);
        for i in 0..phnum {
            let ph = phoff + i * 56;
            let vaddr = u64le(ph + 16);
            if u32le(ph) != 1 || !(RAM_BASE..RAM_BASE + RAM_SIZE).contains(&vaddr) {
                continue; // notes and attributes outside RAM
            }
            let (off, filesz) = (u64le(ph + 8) as usize, u64le(ph + 32) as usize);
            let dst = self.regions[0]
                .host()
                .wrapping_add((vaddr - RAM_BASE) as usize);
            // SAFETY: the segment lies inside RAM (checked start; the test
            // programs are small).
            unsafe { std::ptr::copy_nonoverlapping(elf[off..off + filesz].as_ptr(), dst, filesz) };
        }
        u64le(24)
    }
}

impl Bus for TestBus {
    fn ram(&self) -> &[RamRegion] {
        &self.regions
    }
    fn code_map(&self) -> &CodeMap {
        &self.code
    }
    fn read(&self, addr: u64, size: u8) -> Option<u64> {
        match (addr, size) {
            (0x200_bff8, 8) => Some(self.clock.now()),
            (0x200_4000, 8) => Some(self.control.get()?.mtimecmp()),
            (0x1000_0005, 1) => Some(0x60), // LSR: transmitter empty
            _ => None,
        }
    }
    fn write(&self, addr: u64, size: u8, value: u64) -> bool {
        match (addr, size) {
            (0x10_0000, 4) => {
                self.finish.store(value as u32, Ordering::SeqCst);
                if let Some(c) = self.control.get() {
                    c.request_stop();
                }
                true
            }
            (0x1000_0000, 1) => {
                self.uart.lock().unwrap().push(value as u8);
                true
            }
            (0x200_4000, 8) => {
                if let Some(c) = self.control.get() {
                    c.set_mtimecmp(value);
                }
                true
            }
            _ => false,
        }
    }
}

fn build(src: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{src}.elf"));
    let status = Command::new("riscv64-linux-gnu-gcc")
        .args(["-march=rv64gc", "-mabi=lp64d", "-nostdlib", "-static"])
        .args([
            "-Wl,-Ttext=0x80000000",
            "-Wl,-N",
            "-Wl,--no-relax",
            "-Wl,--build-id=none",
        ])
        .arg("-o")
        .arg(&out)
        .arg(dir.join(src))
        .status()
        .expect("riscv64-linux-gnu-gcc not runnable (install gcc-riscv64-linux-gnu)");
    assert!(status.success(), "assembling {src} failed");
    out
}

/// Runs a bare-metal program until it writes the finisher; returns the
/// finisher value and the UART output.
fn run_bare(src: &str, builtin_sbi: bool, jit: bool) -> (u32, String) {
    let elf = std::fs::read(build(src)).unwrap();
    let clock = Arc::new(Clock::new(10_000_000));
    let bus = TestBus::new(clock.clone());
    let entry = bus.load_elf(&elf);
    let mut hart = Hart::new_system(HartConfig {
        hart_id: 0,
        clock,
        sbi_ecalls: builtin_sbi,
    });
    bus.control.set(hart.control().clone()).unwrap();
    hart.set_jit(jit);
    hart.pc = entry;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match hart.run_system(&bus) {
            Exit::Stopped => {
                let f = bus.finish.load(Ordering::SeqCst);
                if f != 0 {
                    let out = String::from_utf8_lossy(&bus.uart.lock().unwrap()).into_owned();
                    return (f, out);
                }
            }
            other => panic!("unexpected exit {other:?} at pc {:#x}", hart.pc),
        }
        assert!(std::time::Instant::now() < deadline, "{src} hung");
    }
}

#[test]
fn privileged_architecture() {
    // Translated to host code and interpreted: the same checks pass.
    for jit in [true, false] {
        let (code, out) = run_bare("priv.S", false, jit);
        assert_eq!(
            code,
            0x5555,
            "jit={jit}: failed check {} ({out})",
            code >> 16
        );
        assert!(out.contains("all checks passed"), "jit={jit}: {out}");
    }
}
