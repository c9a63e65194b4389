//! The machine: RAM, devices and harts put together, booted and run until
//! the guest powers off, resets, or the user quits.
//!
//! Each hart runs on its own host thread (as QEMU's MTTCG). Nothing on the
//! CPU's hot path takes a lock: RAM is one host mapping the harts' TLBs
//! point into, and devices are reached only on MMIO accesses.

use std::io::Write;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use riscv::{csr, irq, Bus, Clock, CodeMap, Exit, Hart, HartConfig, HartControl, Priv, RamRegion};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::clint::Clint;
use crate::fdt::{self, FdtConfig, FdtError};
use crate::htif::{self, HtifCommand};
use crate::irq::HartLines;
use crate::layout::*;
use crate::loader::{self, KernelKind, LoadError};
use crate::mmio::{MmioBus, MmioDevice};
use crate::plic::Plic;
use crate::power::{Power, StopReason, TestFinisher};
use crate::sbi::{self, Fence, SbiAction, SbiHost};
use crate::snapshot::{HsmState, HtifState, MachineState, MachineSummary};
use crate::terminal::InputSink;
use crate::uart::{Console, Uart};
use crate::vmgenid::VmGenId;

/// Which board to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoardKind {
    /// QEMU's `virt` board: Linux with the built-in SBI or a firmware.
    Virt,
    /// A bare-metal ELF in M-mode with HTIF (as `qemu -M spike -bios none`).
    Spike,
}

/// What runs in M-mode on the `virt` board.
#[derive(Clone, Debug)]
pub enum Firmware {
    /// No M-mode software: the kernel starts in S-mode and its SBI calls are
    /// served by the machine ([`crate::sbi`]).
    Builtin,
    /// An SBI firmware (OpenSBI `fw_dynamic` or `fw_jump`, flat binary or
    /// ELF) started in M-mode at the start of RAM.
    File { name: String, data: Vec<u8> },
}

/// A disk on a virtio-blk slot (the same type as the x86 board's).
pub use vmm::board::Disk;

/// An empty drive: no medium (zero sectors), read-write or read-only as
/// the guest will see it. A snapshot of a machine with one can be
/// restored with a disk in that slot: the guest is told of the new
/// capacity (see [`restore`]).
pub fn empty_disk(read_only: bool) -> Disk {
    Disk::new(Arc::new(virtio::EmptyMedium), read_only)
}

/// A network card on a virtio-net slot (the same type on both boards).
pub use virtio::Nic;

/// A kernel or initrd, in memory or read from its file when loaded.
pub use crate::loader::BootFile;

/// Everything a machine is made of.
pub struct MachineConfig {
    pub board: BoardKind,
    pub harts: usize,
    pub mem_size: u64,
    /// File name (for messages) and contents of the kernel or ELF program.
    pub kernel_name: String,
    pub kernel: BootFile,
    pub initrd: Option<BootFile>,
    pub append: String,
    pub firmware: Firmware,
    pub disks: Vec<Disk>,
    /// Add a virtio-rng device (the guest's entropy source).
    pub rng: bool,
    /// Add a virtio-console device (the guest's `/dev/hvc0`), sharing the
    /// host console with the UART: see [`console_input_to_hvc`] for where
    /// input goes.
    pub virtio_console: bool,
    /// Network cards, each on its own virtio slot (after the disks, the
    /// rng and the console, so adding one renames nothing else).
    pub nics: Vec<Nic>,
    /// Where the console output goes.
    pub output: Box<dyn Write + Send>,
    /// Where console input comes from (e.g. stdin), if anywhere.
    pub input: Option<RawFd>,
    /// Translate guest code to host code (see the `riscv` crate's JIT);
    /// `false` runs the interpreter alone.
    pub jit: bool,
    /// Stop the machine ([`StopReason::Timeout`]) after this long.
    pub timeout: Option<std::time::Duration>,
}

/// Errors building or starting a machine. Messages name the problem.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Fdt(#[from] FdtError),
    #[error("cannot allocate guest RAM: {0}")]
    Ram(#[source] vmm::Error),
    #[error("{harts} harts requested: this machine supports 1 to {MAX_HARTS}")]
    Harts { harts: usize },
    #[error(
        "memory size {size} bytes is out of range: use {MIN_MEM_MIB} MiB to {MAX_MEM_GIB} GiB"
    )]
    MemSize { size: u64 },
    #[error("not enough memory: {what} needs {need_mib} MiB of RAM but the machine has {have_mib} MiB (use --mem)")]
    TooLittleMemory {
        what: String,
        need_mib: u64,
        have_mib: u64,
    },
    #[error("{0} virtio devices requested (disks, NICs, rng and console): the board has {VIRTIO_SLOTS} slots")]
    TooManyDevices(usize),
    #[error("a firmware file needs the virt machine")]
    FirmwareOnSpike,
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the program's `{symbol}` symbol at {addr:#x} is not an 8-byte aligned word in RAM")]
    BadHtifSymbol { symbol: &'static str, addr: u64 },
    #[error(transparent)]
    SnapshotFile(#[from] vmm::snapshot::SnapshotError),
    #[error("cannot restore the snapshot into this machine: {0}")]
    SnapshotMismatch(String),
    #[error("the snapshot state is inconsistent: {0}")]
    SnapshotState(String),
    #[error("the machine must be paused first")]
    NotPaused,
    #[error("the machine is not running (it stopped: {0:?})")]
    NotRunning(Option<StopReason>),
    #[error("disk {index} is a raw image opened read-write: a snapshot could not give back its contents of this moment on restore; use a qcow2 image (internal snapshots) or attach it read-only")]
    RawDiskSnapshot { index: usize },
    #[error("disk {index}: {what}: {source}")]
    DiskSnapshot {
        index: usize,
        what: String,
        #[source]
        source: image::Error,
    },
    #[error("a virtio device cannot be saved or restored: {0}")]
    Virtio(#[from] virtio::persist::PersistError),
    #[error("hart {hart}: {source}")]
    HartState {
        hart: usize,
        #[source]
        source: riscv::PersistError,
    },
    #[error(transparent)]
    DeviceState(#[from] crate::snapshot::DeviceStateError),
    #[error("cannot restart a virtio device: {0}")]
    VirtioResume(#[source] virtio::Error),
}

/// Most harts a machine may have (PLIC contexts and CLINT registers are
/// laid out for this many, as on QEMU's board).
pub const MAX_HARTS: usize = 64;
const MIN_MEM_MIB: u64 = 2;
const MAX_MEM_GIB: u64 = 64;
const MIB: u64 = 1 << 20;

/// The ISA the `riscv` crate's harts implement, as device-tree extensions.
const ISA_EXTENSIONS: &[&str] = &[
    "i", "m", "a", "f", "d", "c", "zicntr", "zicsr", "zifencei", "zba", "zbb", "zbs", "sstc",
];

/// The physical address space the harts see.
struct BoardBus {
    ram: Vec<RamRegion>,
    code: CodeMap,
    mmio: MmioBus,
}

impl Bus for BoardBus {
    fn ram(&self) -> &[RamRegion] {
        &self.ram
    }
    fn code_map(&self) -> &CodeMap {
        &self.code
    }
    fn read(&self, addr: u64, size: u8) -> Option<u64> {
        self.mmio.read(addr, size)
    }
    fn write(&self, addr: u64, size: u8, value: u64) -> bool {
        self.mmio.write(addr, size, value)
    }
}

/// State shared by the hart threads.
struct Shared {
    bus: BoardBus,
    controls: Vec<Arc<HartControl>>,
    hsm: Mutex<Vec<HsmState>>,
    hsm_cond: Condvar,
    power: Arc<Power>,
    console: Arc<Console>,
    mem: GuestMemoryMmap,
    /// Set (under `pause`'s lock) while the machine is to be paused.
    pause_requested: AtomicBool,
    pause: Mutex<Parking>,
    pause_cond: Condvar,
}

/// Harts parked by a pause, with their saved states.
struct Parking {
    parked: usize,
    states: Vec<Option<riscv::HartState>>,
    /// The clock when the pause completed, restored on resume so the guest
    /// does not see the paused time.
    time: u64,
}

impl Shared {
    fn hsm(&self) -> MutexGuard<'_, Vec<HsmState>> {
        self.hsm.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn parking(&self) -> MutexGuard<'_, Parking> {
        self.pause.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// If a pause is requested, saves the hart's state, counts it parked
    /// and waits for the resume (or the machine's stop). Returns whether
    /// it parked.
    fn park_if_paused(&self, id: usize, hart: &Hart) -> bool {
        if !self.pause_requested.load(Ordering::Acquire) {
            return false;
        }
        let mut p = self.parking();
        if !self.pause_requested.load(Ordering::Acquire) {
            return false;
        }
        p.states[id] = Some(hart.save_state());
        p.parked += 1;
        self.pause_cond.notify_all();
        while self.pause_requested.load(Ordering::Acquire) && !self.power.is_stopped() {
            p = self.pause_cond.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.parked -= 1;
        p.states[id] = None;
        true
    }
}

/// A virtio-mmio transport as a board device.
struct VirtioSlot(Mutex<virtio::MmioTransport>);

impl MmioDevice for VirtioSlot {
    fn read(&self, offset: u64, size: u8) -> u64 {
        let mut buf = [0u8; 8];
        let n = (size as usize).min(8);
        if offset < virtio::MMIO_WINDOW_SIZE {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(offset, &mut buf[..n]);
        }
        u64::from_le_bytes(buf)
    }
    fn write(&self, offset: u64, size: u8, value: u64) {
        let n = (size as usize).min(8);
        if offset < virtio::MMIO_WINDOW_SIZE {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(offset, &value.to_le_bytes()[..n]);
        }
    }
}

/// The page holding a spike program's `tohost`/`fromhost` words, served as
/// MMIO so every store to `tohost` reaches the host at once (as QEMU does).
struct HtifPage {
    page: u64,
    tohost: u64,
    fromhost: Option<u64>,
    bytes: Mutex<Vec<u8>>,
    console: Arc<Console>,
    power: Arc<Power>,
    mem: GuestMemoryMmap,
}

/// Largest `write` the HTIF syscall proxy copies in one call.
const HTIF_MAX_WRITE: u64 = 1 << 20;

impl HtifPage {
    fn word(bytes: &[u8], off: u64) -> u64 {
        let o = off as usize;
        u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]))
    }
    fn set_word(bytes: &mut [u8], off: u64, v: u64) {
        let o = off as usize;
        bytes[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn command(&self, bytes: &mut [u8], cmd: u64) {
        let to_off = self.tohost - self.page;
        let reply = match htif::decode(cmd) {
            HtifCommand::Exit(code) => {
                self.power.stop(StopReason::PowerOff(code as u32));
                None
            }
            HtifCommand::Putchar(c) => {
                self.console.write(&[c]);
                Some(htif::response(1, 1, 0x100 | c as u64))
            }
            HtifCommand::Getchar => {
                let c = self.console.pop_input().map_or(0, |c| 0x100 | c as u64);
                Some(htif::response(1, 0, c))
            }
            HtifCommand::Syscall(addr) => {
                self.syscall(addr);
                Some(1)
            }
            HtifCommand::Unknown { .. } => None,
        };
        Self::set_word(bytes, to_off, 0);
        if let (Some(r), Some(from)) = (reply, self.fromhost) {
            if from >= self.page && from.saturating_add(8) <= self.page + PAGE {
                Self::set_word(bytes, from - self.page, r);
            } else {
                let _ = self.mem.write_obj(r, GuestAddress(from));
            }
        }
    }

    /// riscv-pk's syscall proxy: `magic_mem` holds the number and arguments;
    /// the result replaces the number.
    fn syscall(&self, addr: u64) {
        let mut args = [0u64; 4];
        for (i, a) in args.iter_mut().enumerate() {
            *a = self
                .mem
                .read_obj(GuestAddress(addr + 8 * i as u64))
                .unwrap_or(0);
        }
        let result = match args[0] {
            htif::SYS_WRITE if args[1] == 1 || args[1] == 2 => {
                let len = args[3].min(HTIF_MAX_WRITE);
                let mut buf = vec![0u8; len as usize];
                match self.mem.read_slice(&mut buf, GuestAddress(args[2])) {
                    Ok(()) => {
                        self.console.write(&buf);
                        len
                    }
                    Err(_) => (-14i64) as u64, // EFAULT
                }
            }
            htif::SYS_EXIT => {
                self.power.stop(StopReason::PowerOff(args[1] as u32));
                0
            }
            _ => (-38i64) as u64, // ENOSYS
        };
        let _ = self.mem.write_obj(result, GuestAddress(addr));
    }
}

const PAGE: u64 = 4096;

impl MmioDevice for HtifPage {
    fn read(&self, offset: u64, size: u8) -> u64 {
        let b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = [0u8; 8];
        let n = (size as usize).min(8);
        if let Some(src) = b.get(offset as usize..offset as usize + n) {
            v[..n].copy_from_slice(src);
        }
        u64::from_le_bytes(v)
    }
    fn write(&self, offset: u64, size: u8, value: u64) {
        let mut b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let n = (size as usize).min(8);
        let o = offset as usize;
        if let Some(dst) = b.get_mut(o..o + n) {
            dst.copy_from_slice(&value.to_le_bytes()[..n]);
        }
        let to_off = self.tohost - self.page;
        if offset < to_off + 8 && offset + n as u64 > to_off {
            let cmd = Self::word(&b, to_off);
            if cmd != 0 {
                self.command(&mut b, cmd);
            }
        }
    }
}

/// The host console's output as a `Write`, for the virtio console: its
/// bytes then go through the same lock as the UART's and the SBI
/// console's, so the three never interleave within one write.
struct ConsoleOut(Arc<Console>);

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        // Console::write flushes every write.
        Ok(())
    }
}

/// Whether the host terminal's input goes to the virtio console rather
/// than the UART. Both share one terminal, and a key must reach one of
/// them only (a guest reading both, e.g. a getty on each, would see every
/// key twice), so input follows the kernel's own rule for `/dev/console`:
/// the last `console=` on the command line wins. `console=hvc0` (last)
/// sends input to hvc0; anything else (`ttyS0`, none) keeps it on the
/// UART, as before the virtio console existed.
pub fn console_input_to_hvc(append: &str) -> bool {
    append
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("console="))
        .next_back()
        .is_some_and(|c| c.starts_with("hvc"))
}

/// Where things were placed in RAM.
#[derive(Debug, Clone, Copy)]
struct Placement {
    entry: u64,
    dtb: u64,
    /// fw_dynamic_info, for a firmware file.
    dyn_info: u64,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn too_little(what: &str, need_end: u64, mem: u64) -> MachineError {
    MachineError::TooLittleMemory {
        what: what.into(),
        need_mib: (need_end - RAM_BASE).div_ceil(MIB),
        have_mib: mem / MIB,
    }
}

/// Copies `data` into guest RAM at `addr` after checking it fits.
fn put(
    mem: &GuestMemoryMmap,
    size: u64,
    what: &str,
    addr: u64,
    data: &[u8],
) -> Result<(), MachineError> {
    loader::check_fits(what, addr, data.len() as u64, RAM_BASE, size)?;
    mem.write_slice(data, GuestAddress(addr))
        .map_err(|_| LoadError::DoesNotFit {
            what: what.into(),
            addr,
            len: data.len() as u64,
            ram_base: RAM_BASE,
            ram_end: RAM_BASE + size,
        })?;
    Ok(())
}

/// The size of a kernel or initrd.
fn file_len(what: &str, f: &BootFile) -> Result<u64, MachineError> {
    f.len().map_err(|source| {
        LoadError::Read {
            what: what.into(),
            source,
        }
        .into()
    })
}

/// Copies a kernel or initrd to guest-physical `addr`; a file is read
/// straight into RAM.
fn put_file(board: &Board, what: &str, addr: u64, f: &BootFile) -> Result<(), MachineError> {
    let len = file_len(what, f)?;
    loader::check_fits(what, addr, len, RAM_BASE, board.mem_size)?;
    // SAFETY: `check_fits` put `addr..addr + len` inside RAM, one
    // contiguous host mapping that lives as long as the board; no hart
    // runs yet, so nothing else accesses these bytes.
    let dst = unsafe {
        std::slice::from_raw_parts_mut(
            board.ram.host_ptr().add((addr - RAM_BASE) as usize),
            len as usize,
        )
    };
    f.read_into(dst).map_err(|source| {
        LoadError::Read {
            what: what.into(),
            source,
        }
        .into()
    })
}

/// Loads an ELF program's segments; returns its entry point and the end of
/// the highest segment.
fn put_elf(
    mem: &GuestMemoryMmap,
    size: u64,
    name: &str,
    prog: &loader::ElfProgram,
) -> Result<u64, MachineError> {
    let mut end = 0;
    for seg in &prog.segments {
        let total = seg.data.len() as u64 + seg.zero;
        if let Err(e) = loader::check_fits(name, seg.addr, total, RAM_BASE, size) {
            if seg.addr >= RAM_BASE && seg.addr.saturating_add(total) > RAM_BASE + size {
                return Err(too_little(name, seg.addr.saturating_add(total), size));
            }
            return Err(e.into());
        }
        put(mem, size, name, seg.addr, &seg.data)?;
        // The RAM is fresh anonymous memory: bss is already zero.
        end = end.max(seg.addr + total);
    }
    Ok(end)
}

/// A running or finished machine's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reason: StopReason,
}

/// Builds the machine described by `cfg`, runs it until it stops, and
/// returns why it stopped.
pub fn run(cfg: MachineConfig) -> Result<Outcome, MachineError> {
    start(cfg)?.wait()
}

/// Builds the machine described by `cfg`, loads its kernel and starts it;
/// returns a handle to pause, snapshot, resume and wait for it.
pub fn start(cfg: MachineConfig) -> Result<RunningMachine, MachineError> {
    let mut cfg = cfg;
    let kernel = check(&mut cfg)?;
    let summary = summary(&cfg);
    let mut board = build(&mut cfg, None)?;
    let loaded = load(&cfg, &board, &kernel)?;
    let hsm = initial_harts(&mut board, &loaded);
    let input_to_hvc = console_input_to_hvc(&cfg.append);
    launch(cfg, board, summary, hsm, loaded.htif, input_to_hvc)
}

/// Builds a machine from a snapshot (the state file `state_path` and the
/// memory file `mem_path`, as [`RunningMachine::snapshot`] wrote them) and
/// runs it from the snapshot's instant.
///
/// `cfg` supplies what a snapshot cannot hold: the disks' and NICs'
/// backends, the console's output and input, the JIT choice and the time
/// limit. Its harts, RAM size, firmware kind and devices must match the
/// snapshot's (else [`MachineError::SnapshotMismatch`] says what
/// differs); its kernel, initrd and command line are not used. qcow2
/// disks are reverted to the internal snapshot taken with the state (as
/// QEMU's `loadvm`). Everything is checked before a hart runs: on error
/// nothing was started.
pub fn restore(
    cfg: MachineConfig,
    state_path: &Path,
    mem_path: &Path,
) -> Result<RunningMachine, MachineError> {
    restore_with(cfg, state_path, mem_path, false)
}

/// [`restore`], but the machine is left paused before any hart runs an
/// instruction (the control API's `snapshot/load` without `resume_vm`):
/// [`RunningMachine::resume`] starts it.
pub fn restore_paused(
    cfg: MachineConfig,
    state_path: &Path,
    mem_path: &Path,
) -> Result<RunningMachine, MachineError> {
    restore_with(cfg, state_path, mem_path, true)
}

/// The VM configuration a snapshot recorded for its restorer (see
/// [`RunningMachine::snapshot_with_config`]), if any.
pub fn snapshot_config(state_path: &Path) -> Result<Option<serde_json::Value>, MachineError> {
    let st: MachineState = vmm::snapshot::read_state(state_path)?;
    Ok(st.vm_config)
}

fn restore_with(
    cfg: MachineConfig,
    state_path: &Path,
    mem_path: &Path,
    paused: bool,
) -> Result<RunningMachine, MachineError> {
    let mut cfg = cfg;
    let st: MachineState = vmm::snapshot::read_state(state_path)?;
    check_limits(&cfg)?;
    check_state(&st)?;
    let summary = summary(&cfg);
    if let Some(what) = st.machine.mismatch(&summary) {
        return Err(MachineError::SnapshotMismatch(what));
    }
    vmm::board::revert_disks(&cfg.disks, &st.disks, &st.machine.disk_sizes).map_err(disk_error)?;
    let ram = vmm::GuestRam::from_file(RAM_BASE, mem_path, summary.mem_size as usize)?;
    let board = build(&mut cfg, Some((&st, ram)))?;
    let htif = st.htif.as_ref().map(|h| (h.tohost, h.fromhost));
    let m = launch_paused(cfg, board, summary, st.hsm.clone(), htif, st.input_to_hvc)?;
    if let (Some(page), Some(saved)) = (&m.htif, &st.htif) {
        let mut b = page.bytes.lock().unwrap_or_else(|e| e.into_inner());
        b.copy_from_slice(&saved.bytes);
    }
    if paused {
        // Each hart parks at the top of its loop, before its first
        // instruction.
        let _p = m.shared.parking();
        m.shared.pause_requested.store(true, Ordering::Release);
    }
    m.start_harts()?;
    if paused {
        m.wait_parked()?;
    }
    Ok(m)
}

/// Checks the parts of a state file the summary does not cover.
fn check_state(st: &MachineState) -> Result<(), MachineError> {
    let bad = |what: String| Err(MachineError::SnapshotState(what));
    if st.version != crate::snapshot::MACHINE_STATE_VERSION {
        return bad(format!(
            "machine state version {} (this build reads version {})",
            st.version,
            crate::snapshot::MACHINE_STATE_VERSION
        ));
    }
    let m = &st.machine;
    if st.harts.len() != m.vcpus || st.hsm.len() != m.vcpus {
        return bad(format!(
            "{} hart states and {} HSM states for {} harts",
            st.harts.len(),
            st.hsm.len(),
            m.vcpus
        ));
    }
    if st.virtio.len() != m.devices.len() {
        return bad(format!(
            "{} virtio states for {} devices",
            st.virtio.len(),
            m.devices.len()
        ));
    }
    if m.disk_sizes.len() != m.devices.iter().filter(|d| *d == "block").count() {
        return bad("the disk list does not match the device list".into());
    }
    if let Some(h) = &st.htif {
        let ok = h.bytes.len() == PAGE as usize
            && h.tohost.is_multiple_of(8)
            && h.tohost >= RAM_BASE
            && h.tohost
                .checked_add(8)
                .is_some_and(|e| e <= RAM_BASE + m.mem_size)
            && h.fromhost.is_none_or(|f| {
                f.is_multiple_of(8)
                    && f >= RAM_BASE
                    && f.checked_add(8).is_some_and(|e| e <= RAM_BASE + m.mem_size)
            });
        if !ok {
            return bad("the HTIF page is not a page of RAM-aligned words".into());
        }
    }
    for d in &st.disks {
        if d.disk >= m.disk_sizes.len() {
            return bad(format!(
                "a disk snapshot names disk {}, which does not exist",
                d.disk
            ));
        }
    }
    Ok(())
}

/// The disks' part of a snapshot or restore, in this board's errors.
fn disk_error(e: vmm::board::DiskSnapshotError) -> MachineError {
    match e {
        vmm::board::DiskSnapshotError::Image {
            index,
            what,
            source,
        } => MachineError::DiskSnapshot {
            index,
            what,
            source,
        },
        vmm::board::DiskSnapshotError::Mismatch(what) => MachineError::SnapshotMismatch(what),
    }
}

/// Refuses a configuration this board cannot run, and identifies the
/// kernel, before anything is allocated.
fn check(cfg: &mut MachineConfig) -> Result<KernelKind, MachineError> {
    check_limits(cfg)?;
    let kernel = loader::identify_kernel_file(&cfg.kernel_name, std::mem::take(&mut cfg.kernel))?;
    if cfg.board == BoardKind::Spike && matches!(kernel, KernelKind::Image(..)) {
        return Err(LoadError::BadElf {
            what: cfg.kernel_name.clone(),
            msg: "the spike machine runs ELF programs, not Linux Images".into(),
        }
        .into());
    }
    Ok(kernel)
}

/// The board's limits: harts, RAM size, slots.
fn check_limits(cfg: &MachineConfig) -> Result<(), MachineError> {
    if cfg.harts == 0 || cfg.harts > MAX_HARTS {
        return Err(MachineError::Harts { harts: cfg.harts });
    }
    if cfg.mem_size < MIN_MEM_MIB * MIB || cfg.mem_size > MAX_MEM_GIB << 30 {
        return Err(MachineError::MemSize { size: cfg.mem_size });
    }
    let nslots = cfg.disks.len() + cfg.rng as usize + cfg.virtio_console as usize + cfg.nics.len();
    if nslots > VIRTIO_SLOTS {
        return Err(MachineError::TooManyDevices(nslots));
    }
    if cfg.board == BoardKind::Spike && !matches!(cfg.firmware, Firmware::Builtin) {
        return Err(MachineError::FirmwareOnSpike);
    }
    Ok(())
}

/// The board's hardware, built but not yet started.
struct Board {
    ram: vmm::GuestRam,
    /// RAM size in bytes (page aligned).
    mem_size: u64,
    builtin_sbi: bool,
    harts: Vec<Hart>,
    controls: Vec<Arc<HartControl>>,
    clock: Arc<Clock>,
    power: Arc<Power>,
    console: Arc<Console>,
    clint: Arc<Clint>,
    plic: Arc<Plic>,
    uart: Arc<Uart>,
    mmio: MmioBus,
    transports: Vec<Arc<VirtioSlot>>,
    /// The virtio console's input handle, if there is one.
    hvc_host: Option<virtio::ConsoleHost>,
    /// Virtio slots in use, for the device tree.
    virtio_slots: Vec<usize>,
    /// The VM generation ID device (the `virt` board's).
    vmgenid: Option<Arc<VmGenId>>,
}

impl Board {
    fn mem(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    fn ram_end(&self) -> u64 {
        RAM_BASE + self.mem_size
    }
}

/// The device in each virtio slot, as [`build`] places them.
fn device_kinds(cfg: &MachineConfig) -> Vec<String> {
    let mut v = vec!["block".to_string(); cfg.disks.len()];
    if cfg.rng {
        v.push("rng".into());
    }
    if cfg.virtio_console {
        v.push("console".into());
    }
    v.extend(cfg.nics.iter().map(|_| "net".to_string()));
    v
}

/// The configuration a snapshot records and a restore must match.
fn summary(cfg: &MachineConfig) -> MachineSummary {
    MachineSummary {
        board: match cfg.board {
            BoardKind::Virt => crate::snapshot::BOARD_NAME,
            BoardKind::Spike => crate::snapshot::SPIKE_BOARD_NAME,
        }
        .into(),
        vcpus: cfg.harts,
        mem_size: cfg.mem_size & !(PAGE - 1),
        builtin_sbi: Some(
            cfg.board == BoardKind::Virt && matches!(cfg.firmware, Firmware::Builtin),
        ),
        devices: device_kinds(cfg),
        disk_sizes: cfg.disks.iter().map(|d| d.backend.len()).collect(),
    }
}

/// Allocates RAM (or takes the snapshot's), makes the harts and wires up
/// the devices; with a snapshot, puts every device's saved state back
/// (the interrupt controller last, so it drives the harts' lines from its
/// own state) and sets the clock to the snapshot's time.
fn build(
    cfg: &mut MachineConfig,
    restore: Option<(&MachineState, vmm::GuestRam)>,
) -> Result<Board, MachineError> {
    let mem_size = cfg.mem_size & !(PAGE - 1);
    let (ram, saved) = match restore {
        Some((st, ram)) => (ram, Some(st)),
        None => (
            vmm::GuestRam::new(RAM_BASE, mem_size as usize).map_err(MachineError::Ram)?,
            None,
        ),
    };
    let mem = ram.memory().clone();

    let clock = Arc::new(Clock::new(TIMEBASE_HZ));
    let builtin_sbi = cfg.board == BoardKind::Virt && matches!(cfg.firmware, Firmware::Builtin);
    let mut harts = Vec::with_capacity(cfg.harts);
    for i in 0..cfg.harts {
        let mut h = Hart::new_system(HartConfig {
            hart_id: i as u64,
            clock: clock.clone(),
            sbi_ecalls: builtin_sbi,
        });
        h.set_jit(cfg.jit);
        if let Some(st) = saved {
            h.restore_state(&st.harts[i])
                .map_err(|source| MachineError::HartState { hart: i, source })?;
        }
        harts.push(h);
    }
    let controls: Vec<Arc<HartControl>> = harts.iter().map(|h| h.control().clone()).collect();

    let power = Power::new();
    let output = std::mem::replace(&mut cfg.output, Box::new(std::io::sink()));
    let console = Arc::new(Console::new(output));
    let lines = Arc::new(HartLines(controls.clone()));
    let plic = Arc::new(Plic::new(cfg.harts, lines));
    let uart = Uart::new(console.clone(), Arc::new(plic.line(UART_IRQ)));
    let clint = Arc::new(Clint::new(controls.clone(), clock.clone()));

    let mut mmio = MmioBus::new();
    mmio.add(
        TEST_BASE,
        TEST_SIZE,
        Arc::new(TestFinisher::new(power.clone())),
    );
    mmio.add(CLINT_BASE, CLINT_SIZE, clint.clone());
    mmio.add(PLIC_BASE, PLIC_SIZE, plic.clone());
    mmio.add(UART_BASE, UART_SIZE, uart.clone());

    let mut transports = Vec::new();
    let mut add_virtio = |dev: Box<dyn virtio::VirtioDevice>,
                          mmio: &mut MmioBus|
     -> Result<(), MachineError> {
        let slot = transports.len();
        let line = Arc::new(plic.line(VIRTIO_IRQ_BASE + slot as u32));
        let t = match saved {
            Some(st) => virtio::MmioTransport::restore(dev, mem.clone(), line, &st.virtio[slot])?,
            None => virtio::MmioTransport::new(dev, mem.clone(), line),
        };
        let t = Arc::new(VirtioSlot(Mutex::new(t)));
        mmio.add(virtio_base(slot), VIRTIO_STRIDE, t.clone());
        transports.push(t);
        Ok(())
    };
    for (i, d) in cfg.disks.iter().enumerate() {
        let blk = virtio::Block::new(
            d.backend.clone(),
            virtio::BlockConfig {
                read_only: d.read_only,
                serial: format!("virtkit-disk{i}"),
            },
        );
        add_virtio(Box::new(blk), &mut mmio)?;
    }
    if cfg.rng {
        add_virtio(Box::new(virtio::Rng::new()), &mut mmio)?;
    }
    // The virtio console writes to the same host output as the UART (one
    // lock orders their bytes); its input handle goes to the terminal
    // reader when the kernel's console is hvc0.
    let mut hvc_host = None;
    if cfg.virtio_console {
        let (dev, host) = virtio::Console::new(Box::new(ConsoleOut(console.clone())), None);
        add_virtio(Box::new(dev), &mut mmio)?;
        hvc_host = Some(host);
    }
    for nic in std::mem::take(&mut cfg.nics) {
        add_virtio(Box::new(virtio::Net::new(nic.backend, nic.mac)), &mut mmio)?;
    }
    // Linux's vmgenid driver reseeds the guest's random number generator
    // when the ID changes: a restored machine is a new generation (after
    // the PLIC's restore, which sets every line's level).
    let vmgenid = (cfg.board == BoardKind::Virt).then(|| {
        let g = Arc::new(VmGenId::new(random_id(), Arc::new(plic.line(VMGENID_IRQ))));
        mmio.add(VMGENID_BASE, VMGENID_SIZE, g.clone());
        g
    });
    if let Some(st) = saved {
        clint.restore(&st.clint)?;
        uart.restore(&st.uart)?;
        plic.restore(&st.plic)?;
        clock.set(st.time);
        if let Some(g) = &vmgenid {
            g.new_generation(random_id());
        }
    }
    let virtio_slots: Vec<usize> = (0..transports.len()).collect();
    Ok(Board {
        ram,
        mem_size,
        builtin_sbi,
        harts,
        controls,
        clock,
        power,
        console,
        clint,
        plic,
        uart,
        mmio,
        transports,
        hvc_host,
        virtio_slots,
        vmgenid,
    })
}

/// What [`load`] placed in RAM.
struct Loaded {
    place: Placement,
    /// The spike program's `tohost` (and `fromhost`) words, served as MMIO.
    htif: Option<(u64, Option<u64>)>,
}

/// Places the kernel (or bare-metal program), the initrd, the device tree
/// and the firmware in RAM.
fn load(cfg: &MachineConfig, board: &Board, kernel: &KernelKind) -> Result<Loaded, MachineError> {
    let mem = board.mem();
    let mem_size = board.mem_size;
    let ram_end = board.ram_end();
    let mut fdt_cfg = FdtConfig {
        harts: cfg.harts,
        ram_base: RAM_BASE,
        ram_size: mem_size,
        isa_extensions: ISA_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        mmu_type: Some("riscv,sv48".into()),
        bootargs: cfg.append.clone(),
        initrd: None,
        virtio_slots: board.virtio_slots.clone(),
        rng_seed: Some(rng_seed()),
        vmgenid: board.vmgenid.is_some(),
    };
    let (mut kernel_end, kernel_entry, htif) = load_kernel(cfg, board, kernel)?;
    if let Some(initrd) = &cfg.initrd {
        // As QEMU: halfway into RAM, at most 128 MiB in (so the kernel's
        // early mappings reach it), never over the kernel.
        let mut start = RAM_BASE + (mem_size / 2).min(128 * MIB);
        start = start.max(align_up(kernel_end, 2 * MIB));
        if matches!(cfg.firmware, Firmware::File { .. })
            && start < RAM_BASE + FW_JUMP_FDT_OFFSET + FW_JUMP_FDT_ROOM
        {
            // fw_jump would copy the device tree over the initrd's start
            // (a firmware file may be fw_jump or fw_dynamic: the bytes do
            // not say which, so the window is kept free for both).
            start = RAM_BASE + FW_JUMP_FDT_OFFSET + FW_JUMP_FDT_ROOM;
        }
        let end = start + file_len("initrd", initrd)?;
        // Keep the top 2 MiB for the device tree.
        if end + 2 * MIB > ram_end {
            return Err(too_little("the kernel and initrd", end + 2 * MIB, mem_size));
        }
        put_file(board, "initrd", start, initrd)?;
        fdt_cfg.initrd = Some((start, end));
        kernel_end = end;
    }
    let dtb = fdt::build(&fdt_cfg)?;
    // The device tree at the top of RAM, 2 MiB aligned (as QEMU), with the
    // fw_dynamic_info after it.
    let dtb_addr = (ram_end - align_up(dtb.len() as u64 + 64, 8)) & !(2 * MIB - 1);
    if dtb_addr < align_up(kernel_end, 8) || dtb_addr < RAM_BASE {
        return Err(too_little(
            "the kernel and device tree",
            kernel_end + 2 * MIB,
            mem_size,
        ));
    }
    put(mem, mem_size, "device tree", dtb_addr, &dtb)?;
    let mut place = Placement {
        entry: kernel_entry,
        dtb: dtb_addr,
        dyn_info: 0,
    };
    if let Firmware::File { name, data } = &cfg.firmware {
        load_firmware(board, name, data, &mut place, dtb_addr + dtb.len() as u64)?;
    }
    Ok(Loaded { place, htif })
}

/// Loads the kernel Image or ELF program; returns the end of what it
/// occupies, its entry point and, on spike, its HTIF words.
#[allow(clippy::type_complexity)]
fn load_kernel(
    cfg: &MachineConfig,
    board: &Board,
    kernel: &KernelKind,
) -> Result<(u64, u64, Option<(u64, Option<u64>)>), MachineError> {
    let (mem, mem_size, ram_end) = (board.mem(), board.mem_size, board.ram_end());
    match kernel {
        KernelKind::Image(data, hdr) => {
            let addr = RAM_BASE + KERNEL_OFFSET;
            let size = hdr.image_size.max(file_len(&cfg.kernel_name, data)?);
            let end = addr + size;
            if end > ram_end {
                return Err(too_little(
                    &format!("kernel {}", cfg.kernel_name),
                    end,
                    mem_size,
                ));
            }
            put_file(board, &cfg.kernel_name, addr, data)?;
            Ok((end, addr, None))
        }
        KernelKind::Elf(data) => {
            let prog = loader::parse_elf(&cfg.kernel_name, data)?;
            let end = put_elf(mem, mem_size, &cfg.kernel_name, &prog)?;
            let mut htif = None;
            if cfg.board == BoardKind::Spike {
                if let Some(to) = prog.tohost {
                    // HTIF words are 64-bit: an unaligned or out-of-RAM
                    // symbol would make the page handler index past its page.
                    let ok = |a: u64| {
                        a.is_multiple_of(8)
                            && a >= RAM_BASE
                            && a.checked_add(8).is_some_and(|e| e <= ram_end)
                    };
                    if !ok(to) {
                        return Err(MachineError::BadHtifSymbol {
                            symbol: "tohost",
                            addr: to,
                        });
                    }
                    if let Some(from) = prog.fromhost.filter(|&f| !ok(f)) {
                        return Err(MachineError::BadHtifSymbol {
                            symbol: "fromhost",
                            addr: from,
                        });
                    }
                    htif = Some((to, prog.fromhost));
                }
            }
            Ok((end, prog.entry, htif))
        }
    }
}

/// Loads an SBI firmware file at the start of RAM, with its
/// fw_dynamic_info after the device tree (which ends at `dtb_end`).
fn load_firmware(
    board: &Board,
    name: &str,
    data: &[u8],
    place: &mut Placement,
    dtb_end: u64,
) -> Result<(), MachineError> {
    let (mem, mem_size) = (board.mem(), board.mem_size);
    // Firmware at the start of RAM; the kernel at +2 MiB is its next
    // stage. As QEMU with -bios: every hart starts there with a0 = hart
    // id, a1 = device tree, a2 = fw_dynamic_info. fw_dynamic reads the
    // next stage's address from the info; fw_jump ignores it, jumps to
    // its built-in FW_JUMP_ADDR (RAM + 2 MiB on the generic platform,
    // where the Image already is) and hands the kernel its own copy of
    // the device tree at RAM + FW_JUMP_FDT_OFFSET (kept free above).
    let kernel_entry = place.entry;
    let fw_end = match loader::identify_firmware(name, data)? {
        loader::FirmwareKind::Elf(prog) => {
            let end = put_elf(mem, mem_size, name, &prog)?;
            place.entry = prog.entry;
            end
        }
        loader::FirmwareKind::Binary => {
            put(mem, mem_size, name, RAM_BASE, data)?;
            place.entry = RAM_BASE;
            RAM_BASE + data.len() as u64
        }
    };
    if fw_end > RAM_BASE + KERNEL_OFFSET {
        return Err(LoadError::DoesNotFit {
            what: format!("firmware {name}"),
            addr: RAM_BASE,
            len: fw_end - RAM_BASE,
            ram_base: RAM_BASE,
            ram_end: RAM_BASE + KERNEL_OFFSET,
        }
        .into());
    }
    place.dyn_info = align_up(dtb_end, 8);
    put(
        mem,
        mem_size,
        "fw_dynamic_info",
        place.dyn_info,
        &loader::fw_dynamic_info(kernel_entry, 0),
    )
}

/// The harts' view of RAM: all of it, minus the HTIF page on spike (which
/// becomes an MMIO device on `mmio`, so every store to `tohost` reaches the
/// host at once).
fn ram_regions(
    board: &Board,
    htif: Option<(u64, Option<u64>)>,
    mmio: &mut MmioBus,
) -> (Vec<RamRegion>, Option<Arc<HtifPage>>) {
    let ram_end = board.ram_end();
    let host = board.ram.host_ptr();
    let region = |base: u64, end: u64| {
        // SAFETY: `[base, end)` lies inside the RAM mapping owned by
        // `board.ram`, which outlives every hart (harts are joined before
        // the board drops), and both ends are page aligned.
        unsafe { RamRegion::new(base, end - base, host.add((base - RAM_BASE) as usize)) }
    };
    let mut regions = Vec::new();
    let mut page_dev = None;
    match htif {
        Some((tohost, fromhost)) if tohost >= RAM_BASE && tohost + 8 <= ram_end => {
            let page = tohost & !(PAGE - 1);
            if page > RAM_BASE {
                regions.push(region(RAM_BASE, page));
            }
            if page + PAGE < ram_end {
                regions.push(region(page + PAGE, ram_end));
            }
            let mut bytes = vec![0u8; PAGE as usize];
            let _ = board.mem().read_slice(&mut bytes, GuestAddress(page));
            let dev = Arc::new(HtifPage {
                page,
                tohost,
                fromhost,
                bytes: Mutex::new(bytes),
                console: board.console.clone(),
                power: board.power.clone(),
                mem: board.mem().clone(),
            });
            mmio.add(page, PAGE, dev.clone());
            page_dev = Some(dev);
        }
        _ => regions.push(region(RAM_BASE, ram_end)),
    }
    (regions, page_dev)
}

/// Sets the harts' initial registers for a cold boot; returns their HSM
/// states.
fn initial_harts(board: &mut Board, loaded: &Loaded) -> Vec<HsmState> {
    let place = loaded.place;
    let mut states = vec![HsmState::Started; board.harts.len()];
    for (i, h) in board.harts.iter_mut().enumerate() {
        h.set_x(10, i as u64);
        h.set_x(11, place.dtb);
        if board.builtin_sbi {
            setup_builtin_sbi(h);
            if i == 0 {
                h.pc = place.entry;
                h.set_privilege(Priv::Supervisor);
            } else {
                states[i] = HsmState::Stopped;
            }
        } else {
            h.pc = place.entry;
            h.set_x(12, place.dyn_info);
        }
    }
    states
}

/// A started machine: its harts run on their own threads until the guest
/// powers off, resets, the user quits or the time limit passes. Every
/// method takes `&self`, so a control thread (an API server) can pause,
/// snapshot and resume it while another waits for it.
pub struct RunningMachine {
    shared: Arc<Shared>,
    ram: vmm::GuestRam,
    transports: Vec<Arc<VirtioSlot>>,
    clint: Arc<Clint>,
    plic: Arc<Plic>,
    uart: Arc<Uart>,
    clock: Arc<Clock>,
    summary: MachineSummary,
    /// The disks, for snapshots.
    disks: Vec<Disk>,
    input_to_hvc: bool,
    htif: Option<Arc<HtifPage>>,
    /// The harts, until [`RunningMachine::start_harts`] gives each a thread.
    harts: Mutex<Vec<Hart>>,
    timeout: Option<Duration>,
    /// Running time, pauses left out: what `timeout` limits.
    run_clock: vmm::RunClock,
    threads: Mutex<Vec<JoinHandle<()>>>,
    input: Mutex<Option<JoinHandle<()>>>,
    /// Serialises pause, resume, snapshot and teardown.
    ops: Mutex<()>,
}

/// Starts one thread per hart and the terminal reader.
fn launch(
    cfg: MachineConfig,
    board: Board,
    summary: MachineSummary,
    hsm: Vec<HsmState>,
    htif: Option<(u64, Option<u64>)>,
    input_to_hvc: bool,
) -> Result<RunningMachine, MachineError> {
    let m = launch_paused(cfg, board, summary, hsm, htif, input_to_hvc)?;
    m.start_harts()?;
    Ok(m)
}

/// Everything [`launch`] does but starting the hart threads.
fn launch_paused(
    cfg: MachineConfig,
    mut board: Board,
    summary: MachineSummary,
    hsm: Vec<HsmState>,
    htif: Option<(u64, Option<u64>)>,
    input_to_hvc: bool,
) -> Result<RunningMachine, MachineError> {
    let mut mmio = std::mem::take(&mut board.mmio);
    let (regions, htif_page) = ram_regions(&board, htif, &mut mmio);
    let code = CodeMap::new(&regions);
    let power = board.power.clone();
    let harts = std::mem::take(&mut board.harts);
    let nharts = harts.len();

    let shared = Arc::new(Shared {
        bus: BoardBus {
            ram: regions,
            code,
            mmio,
        },
        controls: board.controls.clone(),
        hsm: Mutex::new(hsm),
        hsm_cond: Condvar::new(),
        power: power.clone(),
        console: board.console.clone(),
        mem: board.mem().clone(),
        pause_requested: AtomicBool::new(false),
        pause: Mutex::new(Parking {
            parked: 0,
            states: vec![None; nharts],
            time: 0,
        }),
        pause_cond: Condvar::new(),
    });
    {
        let s = Arc::downgrade(&shared);
        power.on_stop(Box::new(move || {
            if let Some(s) = s.upgrade() {
                for c in &s.controls {
                    c.request_stop();
                }
                drop(s.hsm());
                s.hsm_cond.notify_all();
                drop(s.parking());
                s.pause_cond.notify_all();
            }
        }));
    }

    // A restored device runs again only now that the whole board
    // (interrupt controller included) is back.
    for t in &board.transports {
        t.0.lock()
            .unwrap_or_else(|e| e.into_inner())
            .resume()
            .map_err(MachineError::VirtioResume)?;
    }

    let sink = match board.hvc_host.take() {
        Some(host) if input_to_hvc => InputSink::Virtio(host),
        _ => InputSink::Uart(board.console.clone()),
    };
    let input = cfg
        .input
        .map(|fd| crate::terminal::spawn_input(fd, sink, power.clone()));

    let disks = cfg.disks.clone();
    let m = RunningMachine {
        shared: shared.clone(),
        ram: board.ram.clone(),
        transports: board.transports.clone(),
        clint: board.clint.clone(),
        plic: board.plic.clone(),
        uart: board.uart.clone(),
        clock: board.clock.clone(),
        summary,
        disks,
        input_to_hvc,
        htif: htif_page,
        harts: Mutex::new(harts),
        timeout: cfg.timeout,
        run_clock: vmm::RunClock::new(false),
        threads: Mutex::new(Vec::new()),
        input: Mutex::new(input),
        ops: Mutex::new(()),
    };
    Ok(m)
}

impl RunningMachine {
    /// Gives each hart its thread.
    fn start_harts(&self) -> Result<(), MachineError> {
        let harts = std::mem::take(&mut *self.harts.lock().unwrap_or_else(|e| e.into_inner()));
        for (i, hart) in harts.into_iter().enumerate() {
            let s = self.shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("vk-hart{i}"))
                .spawn(move || hart_thread(s, hart, i))
                .map_err(|e| {
                    self.shared
                        .power
                        .stop(StopReason::Fatal("thread start failed".into()));
                    MachineError::Thread(e)
                })?;
            self.lock_threads().push(t);
        }
        Ok(())
    }

    fn lock_threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_ops(&self) -> MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the machine stopped, once it has.
    pub fn stopped(&self) -> Option<StopReason> {
        self.shared.power.reason()
    }

    /// Stops the machine for `reason` (the first reason wins).
    pub fn stop(&self, reason: StopReason) {
        self.shared.power.stop(reason);
    }

    /// Whether the machine is paused.
    pub fn is_paused(&self) -> bool {
        self.shared.pause_requested.load(Ordering::Acquire)
    }

    /// The configuration a snapshot of this machine records.
    pub fn summary(&self) -> &MachineSummary {
        &self.summary
    }

    /// Stops every hart at an instruction boundary and quiesces the
    /// virtio devices (each finishes the request it is on). The guest's
    /// clock stops with it. A no-op if already paused.
    pub fn pause(&self) -> Result<(), MachineError> {
        let _op = self.lock_ops();
        let s = &self.shared;
        if s.power.is_stopped() {
            return Err(MachineError::NotRunning(s.power.reason()));
        }
        if self.is_paused() {
            return Ok(());
        }
        {
            let _p = s.parking();
            s.pause_requested.store(true, Ordering::Release);
        }
        for c in &s.controls {
            c.request_stop();
        }
        drop(s.hsm());
        s.hsm_cond.notify_all();
        self.wait_parked()
    }

    /// The second half of a pause, once `pause_requested` is set: waits
    /// until every hart parked, then stops the clock and the devices.
    fn wait_parked(&self) -> Result<(), MachineError> {
        let s = &self.shared;
        let n = s.controls.len();
        let mut p = s.parking();
        while p.parked < n && !s.power.is_stopped() {
            if self.lock_threads().iter().any(|t| t.is_finished()) {
                // A hart thread died (it reported through the panic
                // hook): it will never park. Stop the machine, without
                // the parking lock (the stop hook takes it).
                drop(p);
                s.power
                    .stop(StopReason::Fatal("a hart thread crashed".into()));
                p = s.parking();
                break;
            }
            p = s
                .pause_cond
                .wait_timeout(p, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if s.power.is_stopped() {
            drop(p);
            s.pause_requested.store(false, Ordering::Release);
            return Err(MachineError::NotRunning(s.power.reason()));
        }
        p.time = self.clock.now();
        drop(p);
        for t in &self.transports {
            t.0.lock().unwrap_or_else(|e| e.into_inner()).pause();
        }
        self.run_clock.pause();
        Ok(())
    }

    /// Runs a paused machine again from where it stopped; the guest does
    /// not see the paused time. A no-op if it is not paused.
    pub fn resume(&self) -> Result<(), MachineError> {
        let _op = self.lock_ops();
        let s = &self.shared;
        if !self.is_paused() {
            return Ok(());
        }
        let time = s.parking().time;
        self.clock.set(time);
        for t in &self.transports {
            t.0.lock()
                .unwrap_or_else(|e| e.into_inner())
                .resume()
                .map_err(MachineError::VirtioResume)?;
        }
        let _p = s.parking();
        s.pause_requested.store(false, Ordering::Release);
        s.pause_cond.notify_all();
        self.run_clock.resume();
        Ok(())
    }

    /// Writes a snapshot of the paused machine: its state to `state_path`,
    /// its RAM to `mem_path`, and an internal snapshot into each
    /// read-write qcow2 disk (named in the state file). A read-write disk
    /// that is not qcow2 makes it refuse before anything is written. The
    /// machine stays paused.
    pub fn snapshot(&self, state_path: &Path, mem_path: &Path) -> Result<(), MachineError> {
        self.snapshot_with_config(state_path, mem_path, None)
    }

    /// [`RunningMachine::snapshot`], recording `vm_config` (the caller's
    /// description of the machine: disk paths, networks) in the state file
    /// for whoever restores it ([`snapshot_config`]).
    pub fn snapshot_with_config(
        &self,
        state_path: &Path,
        mem_path: &Path,
        vm_config: Option<serde_json::Value>,
    ) -> Result<(), MachineError> {
        let _op = self.lock_ops();
        if !self.is_paused() {
            return Err(MachineError::NotPaused);
        }
        if state_path == mem_path {
            return Err(MachineError::SnapshotState(format!(
                "the state file and the memory file are both {}",
                state_path.display()
            )));
        }
        if let Some(index) = vmm::board::unsnapshottable_disk(&self.disks) {
            return Err(MachineError::RawDiskSnapshot { index });
        }
        let s = &self.shared;
        let (harts, time) = {
            let p = s.parking();
            let harts = p
                .states
                .iter()
                .cloned()
                .collect::<Option<Vec<_>>>()
                .ok_or(MachineError::NotPaused)?;
            (harts, p.time)
        };
        let virtio = self
            .transports
            .iter()
            .map(|t| t.0.lock().unwrap_or_else(|e| e.into_inner()).save())
            .collect::<Result<Vec<_>, _>>()?;
        let disks = vmm::board::snapshot_disks(&self.disks).map_err(disk_error)?;
        let state = MachineState {
            version: crate::snapshot::MACHINE_STATE_VERSION,
            machine: self.summary.clone(),
            time,
            harts,
            hsm: s.hsm().clone(),
            clint: self.clint.save(),
            plic: self.plic.save(),
            uart: self.uart.save(),
            input_to_hvc: self.input_to_hvc,
            virtio,
            disks,
            htif: self.htif.as_ref().map(|h| HtifState {
                tohost: h.tohost,
                fromhost: h.fromhost,
                bytes: h.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            }),
            vm_config,
        };
        let result = vmm::snapshot::write_memory(mem_path, &self.ram)
            .and_then(|()| vmm::snapshot::write_state(state_path, &state));
        if result.is_err() {
            // Leave no orphaned internal snapshots behind.
            vmm::board::delete_disk_snapshots(&self.disks, &state.disks);
        }
        Ok(result?)
    }

    /// Waits until the machine stops (or its time limit passes), tears it
    /// down (device workers stopped, threads joined) and returns why it
    /// stopped.
    pub fn wait(&self) -> Result<Outcome, MachineError> {
        let power = &self.shared.power;
        if let Some(t) = self.timeout {
            // The limit counts running time only: pauses are left out.
            if self
                .run_clock
                .wait_limit(t, |d| power.wait_timeout(d))
                .is_none()
            {
                power.stop(StopReason::Timeout);
            }
        }
        let reason = power.wait();
        let _op = self.lock_ops();
        let threads = std::mem::take(&mut *self.lock_threads());
        let mut crashed = false;
        for t in threads {
            crashed |= t.join().is_err();
        }
        // Stop the device workers (each finishes the request it is on)
        // before the RAM goes away.
        for t in &self.transports {
            t.0.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        }
        if let Some(t) = self.input.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        if crashed {
            // A hart thread panicked: report it rather than the guest's
            // status.
            return Ok(Outcome {
                reason: StopReason::Fatal("a hart thread crashed".into()),
            });
        }
        Ok(Outcome { reason })
    }
}

impl Drop for RunningMachine {
    /// A machine dropped while running is stopped and torn down first, so
    /// no thread outlives it.
    fn drop(&mut self) {
        if !self.lock_threads().is_empty() {
            self.shared.power.stop(StopReason::Quit);
            let _ = self.wait();
        }
    }
}

/// M-mode state for a kernel started directly in S-mode: what OpenSBI
/// would have set up before jumping to it.
fn setup_builtin_sbi(h: &mut Hart) {
    // Every exception but the ecalls into M-mode goes to the kernel.
    let medeleg = 0xffff & !((1 << 9) | (1 << 10) | (1 << 11) | (1 << 14));
    h.write_csr(csr::MEDELEG, medeleg);
    h.write_csr(csr::MIDELEG, irq::SSIP | irq::STIP | irq::SEIP);
    // cycle, time, instret readable from S and U.
    h.write_csr(csr::MCOUNTEREN, 0x7);
    // time readable from U-mode too (the vDSO's clock_gettime reads it):
    // Linux sets this only in its SBI PMU driver, which OpenSBI's PMU
    // extension enables and the builtin SBI does not offer, so without it
    // every CLOCK_MONOTONIC reader (udhcpc, ...) dies of SIGILL.
    h.write_csr(csr::SCOUNTEREN, 0x2);
    // Sstc: the kernel programs stimecmp itself.
    h.write_csr(csr::MENVCFG, 1 << 63);
    // PMP: all memory for S and U (TOR up to the top).
    h.write_csr(csr::PMPADDR0, u64::MAX >> 10);
    h.write_csr(csr::PMPCFG0, 0x0f);
}

/// A VM generation ID: 16 random bytes from the host.
fn random_id() -> [u8; crate::vmgenid::ID_LEN] {
    let mut id = [0u8; crate::vmgenid::ID_LEN];
    id.copy_from_slice(&rng_seed()[..crate::vmgenid::ID_LEN]);
    id
}

fn rng_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    // The seed only speeds up the guest's entropy pool; without host
    // randomness the guest still works.
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut seed);
    }
    seed
}

/// SBI services as seen from one hart's call.
struct SbiCtx<'a> {
    s: &'a Shared,
    timer: std::cell::Cell<Option<u64>>,
    clear_ssip: std::cell::Cell<bool>,
    local_fence: std::cell::Cell<Option<Fence>>,
}

impl SbiHost for SbiCtx<'_> {
    fn harts(&self) -> usize {
        self.s.controls.len()
    }
    fn set_timer(&self, _hart: usize, deadline: u64) {
        self.timer.set(Some(deadline));
    }
    fn set_ssip(&self, hart: usize, level: bool) {
        if level {
            self.s.controls[hart].post(irq::SSIP);
        } else {
            self.clear_ssip.set(true);
        }
    }
    fn remote_fence(&self, caller: usize, targets: &[usize], fence: Fence) {
        for &t in targets {
            if t == caller {
                self.local_fence.set(Some(fence));
                continue;
            }
            // The target flushes at its next block boundary, before it
            // executes anything else.
            match fence {
                Fence::Instruction => self.s.controls[t].request_fence_i(),
                Fence::Vma { .. } => self.s.controls[t].request_tlb_flush(),
            }
        }
    }
    fn hart_start(&self, hart: usize, start: u64, opaque: u64) -> i64 {
        let mut st = self.s.hsm();
        match st[hart] {
            HsmState::Stopped => {
                st[hart] = HsmState::StartPending {
                    addr: start,
                    opaque,
                };
                self.s.hsm_cond.notify_all();
                sbi::SUCCESS
            }
            _ => sbi::ERR_ALREADY_AVAILABLE,
        }
    }
    fn hart_status(&self, hart: usize) -> i64 {
        match self.s.hsm()[hart] {
            HsmState::Started => sbi::HART_STARTED,
            HsmState::Stopped => sbi::HART_STOPPED,
            HsmState::StartPending { .. } => sbi::HART_START_PENDING,
        }
    }
    fn console_write(&self, bytes: &[u8]) {
        self.s.console.write(bytes);
    }
    fn console_read(&self) -> Option<u8> {
        self.s.console.pop_input()
    }
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.s.mem.read_slice(buf, GuestAddress(addr)).is_ok()
    }
    fn write_phys(&self, addr: u64, buf: &[u8]) -> bool {
        let ok = self.s.mem.write_slice(buf, GuestAddress(addr)).is_ok();
        if ok {
            self.s.bus.code.invalidate(addr, buf.len() as u64);
        }
        ok
    }
    fn stop_machine(&self, reason: StopReason) {
        self.s.power.stop(reason);
    }
}

fn hart_thread(s: Arc<Shared>, mut hart: Hart, id: usize) {
    'run: loop {
        if s.power.is_stopped() {
            return;
        }
        if s.park_if_paused(id, &hart) {
            continue;
        }
        // HSM: a stopped hart waits to be started.
        {
            let mut st = s.hsm();
            loop {
                if s.power.is_stopped() {
                    return;
                }
                if s.pause_requested.load(Ordering::Acquire) {
                    continue 'run;
                }
                match st[id] {
                    HsmState::Started => break,
                    HsmState::Stopped => {
                        st = s.hsm_cond.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                    HsmState::StartPending { addr, opaque } => {
                        st[id] = HsmState::Started;
                        hart.pc = addr;
                        hart.set_x(10, id as u64);
                        hart.set_x(11, opaque);
                        hart.set_privilege(Priv::Supervisor);
                        hart.write_csr(csr::SATP, 0);
                        let sstatus = hart.read_csr(csr::SSTATUS).unwrap_or(0);
                        hart.write_csr(csr::SSTATUS, sstatus & !0x2);
                        hart.flush_tlb();
                        break;
                    }
                }
            }
        }
        match hart.run_system(&s.bus) {
            Exit::Ecall => {
                let mut a = [0u64; 8];
                for (i, r) in a.iter_mut().enumerate() {
                    *r = hart.x(10 + i);
                }
                let ctx = SbiCtx {
                    s: &s,
                    timer: Default::default(),
                    clear_ssip: Default::default(),
                    local_fence: Default::default(),
                };
                let action = sbi::handle(&ctx, id, a);
                if let Some(t) = ctx.timer.get() {
                    hart.set_stimecmp(t);
                }
                if ctx.clear_ssip.get() {
                    let sip = hart.read_csr(csr::SIP).unwrap_or(0);
                    hart.write_csr(csr::SIP, sip & !irq::SSIP);
                }
                match ctx.local_fence.get() {
                    Some(Fence::Instruction) => hart.flush_code(),
                    Some(Fence::Vma { .. }) => hart.flush_tlb(),
                    None => {}
                }
                match action {
                    SbiAction::Return { error, value } => {
                        hart.set_x(10, error as u64);
                        hart.set_x(11, value);
                        hart.pc += 4;
                    }
                    SbiAction::ReturnLegacy(v) => {
                        hart.set_x(10, v);
                        hart.pc += 4;
                    }
                    SbiAction::Suspend => {
                        hart.set_x(10, 0);
                        hart.pc += 4;
                    }
                    SbiAction::StopHart => {
                        s.hsm()[id] = HsmState::Stopped;
                    }
                    SbiAction::Halt => {}
                }
            }
            Exit::Stopped => {}
            other => {
                s.power.stop(StopReason::Fatal(format!(
                    "hart {id} stopped unexpectedly ({other:?}) at pc {:#x}",
                    hart.pc
                )));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_machine_can_be_shared_with_a_control_thread() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RunningMachine>();
    }

    #[test]
    fn input_follows_the_last_console_argument() {
        assert!(!console_input_to_hvc(""));
        assert!(!console_input_to_hvc("console=ttyS0 quiet"));
        assert!(console_input_to_hvc("console=hvc0"));
        assert!(console_input_to_hvc("console=ttyS0 console=hvc0 quiet"));
        assert!(!console_input_to_hvc("console=hvc0 console=ttyS0,115200"));
        // Not a console= argument.
        assert!(!console_input_to_hvc("earlycon=hvc0 console=ttyS0"));
    }
}
