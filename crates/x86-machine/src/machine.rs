//! Building and running the machine: check, build (VM, RAM, irqchip,
//! devices), load (kernel, zero page, tables) or restore (a snapshot's
//! state and memory file), start (one thread per vCPU), then pause,
//! resume and snapshot on request, wait for a stop, tear down.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm::GuestRam;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::{self, BootFile, BootSetup};
use crate::cpu::{self, Entry};
use crate::devices::{Action, Devices, IrqFdTrigger, SerialInput, VirtioSlot};
use crate::irqfd::{self, IrqFdLine, Relay};
use crate::layout::*;
use crate::snapshot::{self, MachineState, MachineSummary, VcpuState};
use crate::{acpi, mptable, Error, Result};

/// Where KVM is unless the caller says otherwise.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

/// A disk for a virtio-blk slot (the same type as the riscv64 board's):
/// with its image file, a qcow2 disk is snapshotted with the machine and
/// reverted on restore; without it, only a read-only disk can be part of
/// a snapshot.
pub use vmm::board::Disk;

/// A network card on a virtio-net slot (the same type on both boards).
pub use virtio::Nic;

/// Everything the machine is made of.
pub struct MachineConfig {
    /// The KVM device (`/dev/kvm`; another path for a KVM elsewhere, or to
    /// check how a missing one is reported).
    pub kvm_path: PathBuf,
    pub vcpus: usize,
    pub mem_size: u64,
    /// ELF vmlinux (or small ELF64 guest) or bzImage: bytes, or a file
    /// read straight into guest RAM.
    pub kernel: BootFile,
    /// For messages.
    pub kernel_name: String,
    pub initrd: Option<BootFile>,
    /// The command line; the board appends its `virtio_mmio.device=`s.
    pub cmdline: String,
    pub disks: Vec<Disk>,
    pub rng: bool,
    /// A virtio console whose output goes to `console_output`.
    pub virtio_console: Option<Box<dyn Write + Send>>,
    /// Network cards, each on its own virtio slot after the disks, the
    /// rng and the console.
    pub nics: Vec<Nic>,
    /// Serial port output.
    pub output: Box<dyn Write + Send>,
    /// Serial port input (a terminal or pipe); Ctrl-A x on it quits.
    pub input: Option<RawFd>,
    pub timeout: Option<Duration>,
}

/// Why the machine stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine through the i8042 (Linux's `reboot`
    /// and `poweroff` with `reboot=k`); a normal end, as in Firecracker.
    Reset,
    /// The guest asked KVM for a system event (PSCI-like shutdown/reset
    /// through the hypervisor, or a crash report).
    SystemEvent {
        vcpu: usize,
        kind: u32,
    },
    /// Ctrl-A x on the input.
    Quit,
    Timeout,
    /// An exit the board cannot handle (a triple fault included), a bad
    /// access, or a KVM failure; the message includes the guest's
    /// registers.
    Fatal(String),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub reason: StopReason,
    /// Port and MMIO accesses no device answered.
    pub unhandled_io: u64,
    pub unhandled_mmio: u64,
    /// Virtio queue notifications that took a vCPU exit (0 while the
    /// ioeventfds work).
    pub notify_exits: u64,
}

/// The stop latch every thread can pull, and the main thread waits on.
struct Power {
    reason: Mutex<Option<StopReason>>,
    cv: Condvar,
}

impl Power {
    fn stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
            self.cv.notify_all();
        }
    }
    fn is_stopped(&self) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
    /// Waits until the machine stops.
    fn wait(&self) -> StopReason {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(reason) = r.clone() {
                return reason;
            }
            r = self.cv.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits up to `timeout` for the machine to stop.
    fn wait_for(&self, timeout: Duration) -> Option<StopReason> {
        let r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        self.cv
            .wait_timeout_while(r, timeout, |r| r.is_none())
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }
}

/// Opens KVM at `path` and checks what the board needs of it.
pub fn open_kvm(path: &std::path::Path) -> Result<Kvm> {
    let shown = path.display().to_string();
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        Error::KvmUnusable {
            path: shown.clone(),
            reason: "the path contains a NUL byte".into(),
        }
    })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|source| Error::NoKvm {
        path: shown.clone(),
        source,
    })?;
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel irqchip"),
        (Cap::Irqfd, "irqfds"),
        (Cap::Ioeventfd, "ioeventfds"),
        (Cap::UserMemory, "user memory regions"),
        (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID"),
        (Cap::SetTssAddr, "KVM_SET_TSS_ADDR"),
        (Cap::Pit2, "an in-kernel PIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmUnusable {
                path: shown,
                reason: format!("it lacks {name}"),
            });
        }
    }
    Ok(kvm)
}

/// A VM with RAM, irqchip and PIT, before devices and vCPUs.
pub(crate) struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub ram: GuestRam,
}

/// `irqchip`: KVM's in-kernel LAPICs, IOAPIC, PIC and PIT (without them,
/// as the probe wants, every vCPU starts runnable).
pub(crate) fn create_vm(kvm: Kvm, mem_size: u64, irqchip: bool) -> Result<Vm> {
    let ram = GuestRam::new(0, mem_size as usize)?;
    create_vm_with_ram(kvm, ram, irqchip)
}

/// [`create_vm`] over given RAM (a snapshot's memory file).
fn create_vm_with_ram(kvm: Kvm, ram: GuestRam, irqchip: bool) -> Result<Vm> {
    let mem_size = ram.size() as u64;
    let k = |what: &'static str| move |source| Error::Kvm { what, source };
    let fd = kvm.create_vm().map_err(k("KVM_CREATE_VM"))?;
    fd.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(k("KVM_SET_TSS_ADDR"))?;
    if irqchip {
        fd.create_irq_chip().map_err(k("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(k("KVM_CREATE_PIT2"))?;
    }
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem_size,
        userspace_addr: ram.host_ptr() as u64,
    };
    // SAFETY: the region is `ram`'s mapping, which stays mapped while the
    // VM exists: `Vm` owns both and the VM fd is dropped (closed) before
    // or together with the mapping's last reference, after every vCPU
    // thread has been joined.
    unsafe { fd.set_user_memory_region(region) }.map_err(k("KVM_SET_USER_MEMORY_REGION"))?;
    Ok(Vm { kvm, fd, ram })
}

fn check(cfg: &MachineConfig) -> Result<()> {
    if cfg.vcpus == 0 || cfg.vcpus > mptable::MAX_MPTABLE_CPUS {
        return Err(Error::Config(format!(
            "{} vCPUs: 1 to {} are supported",
            cfg.vcpus,
            mptable::MAX_MPTABLE_CPUS
        )));
    }
    if cfg.mem_size < MIN_MEM {
        return Err(Error::TooLittleMemory {
            mem_size: cfg.mem_size,
            need: MIN_MEM,
            what: "the boot structures and a kernel above 1 MiB".into(),
        });
    }
    if cfg.mem_size > MAX_MEM {
        return Err(Error::Config(format!(
            "{} bytes of RAM: at most {MAX_MEM:#x} (3 GiB, below the MMIO gap) are supported",
            cfg.mem_size
        )));
    }
    if cfg.mem_size % 4096 != 0 {
        return Err(Error::Config(format!(
            "{} bytes of RAM is not a whole number of 4 KiB pages",
            cfg.mem_size
        )));
    }
    let devices =
        cfg.disks.len() + cfg.rng as usize + cfg.virtio_console.is_some() as usize + cfg.nics.len();
    if devices > MAX_VIRTIO_DEVICES {
        return Err(Error::Config(format!(
            "{devices} virtio devices: the board has {MAX_VIRTIO_DEVICES} slots"
        )));
    }
    Ok(())
}

/// Boots the machine and runs it until it stops.
pub fn run(cfg: MachineConfig) -> Result<Outcome> {
    start(cfg)?.wait()
}

/// The device kinds of each virtio slot, in slot order (as the state
/// file names them).
fn device_kinds(cfg: &MachineConfig) -> Vec<String> {
    let mut v: Vec<String> = cfg.disks.iter().map(|_| "block".to_string()).collect();
    if cfg.rng {
        v.push("rng".into());
    }
    if cfg.virtio_console.is_some() {
        v.push("console".into());
    }
    v.extend(cfg.nics.iter().map(|_| "net".to_string()));
    v
}

fn summary(cfg: &MachineConfig) -> MachineSummary {
    MachineSummary {
        board: snapshot::BOARD_NAME.into(),
        vcpus: cfg.vcpus,
        mem_size: cfg.mem_size,
        builtin_sbi: None,
        devices: device_kinds(cfg),
        disk_sizes: cfg.disks.iter().map(|d| d.backend.len()).collect(),
    }
}

/// The devices of a machine, built (or restored) and wired to the VM.
struct Board {
    devices: Arc<Devices>,
    relays: Vec<Relay>,
    /// `virtio_mmio.device=` for each slot.
    cmdline: String,
    console_host: Option<virtio::ConsoleHost>,
    disks: Vec<Disk>,
}

/// Builds the serial port, the i8042 and the virtio slots (fresh, or
/// from a snapshot's states), their irqfds and ioeventfds.
fn build_devices(vm: &Vm, cfg: &mut MachineConfig, saved: Option<&MachineState>) -> Result<Board> {
    let mem = vm.ram.memory().clone();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
    vm.fd
        .register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(|source| Error::Kvm {
            what: "KVM_IRQFD (serial)",
            source,
        })?;
    let kbd_irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
    vm.fd
        .register_irqfd(&kbd_irq, KBD_IRQ)
        .map_err(|source| Error::Kvm {
            what: "KVM_IRQFD (i8042)",
            source,
        })?;
    let mut virtio_devs: Vec<Box<dyn virtio::VirtioDevice>> = Vec::new();
    let disks = cfg.disks.clone();
    for (i, d) in cfg.disks.iter().enumerate() {
        virtio_devs.push(Box::new(virtio::Block::new(
            d.backend.clone(),
            virtio::BlockConfig {
                read_only: d.read_only,
                serial: format!("virtkit-disk{i}"),
            },
        )));
    }
    if cfg.rng {
        virtio_devs.push(Box::new(virtio::Rng::new()));
    }
    let mut console_host = None;
    if let Some(out) = cfg.virtio_console.take() {
        let (dev, host) = virtio::Console::new(out, None);
        console_host = Some(host);
        virtio_devs.push(Box::new(dev));
    }
    for nic in std::mem::take(&mut cfg.nics) {
        virtio_devs.push(Box::new(virtio::Net::new(nic.backend, nic.mac)));
    }
    let mut cmdline = String::new();
    let mut slots = Vec::new();
    let mut relays: Vec<Relay> = Vec::new();
    for (i, dev) in virtio_devs.into_iter().enumerate() {
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_STRIDE;
        let gsi = VIRTIO_IRQ_BASE + i as u32;
        let queues = dev.queue_max_sizes().len();
        let line = IrqFdLine::new(&vm.fd, gsi)?;
        let transport = match saved {
            None => virtio::MmioTransport::new(dev, mem.clone(), line),
            Some(st) => virtio::MmioTransport::restore(dev, mem.clone(), line, &st.virtio[i])
                .map_err(|e| Error::SnapshotState(format!("virtio slot {i}: {e}")))?,
        };
        let slot = Arc::new(VirtioSlot {
            base,
            transport: Mutex::new(transport),
        });
        relays.push(irqfd::start_relay(&vm.fd, slot.clone(), queues)?);
        slots.push(slot);
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&format!("virtio_mmio.device=4K@{base:#x}:{gsi}"));
    }
    let output = std::mem::replace(&mut cfg.output, Box::new(std::io::sink()));
    let serial = match saved {
        None => vm_superio::Serial::new(IrqFdTrigger(serial_irq), output),
        Some(st) => vm_superio::Serial::from_state(
            &(&st.serial).into(),
            IrqFdTrigger(serial_irq),
            vm_superio::serial::NoEvents,
            output,
        )
        .map_err(|e| Error::SnapshotState(format!("serial port: {e:?}")))?,
    };
    let devices = Arc::new(Devices {
        serial: Mutex::new(serial),
        virtio: slots,
        i8042: Mutex::new(saved.map(|st| st.i8042.clone()).unwrap_or_default()),
        serial_input: Mutex::new(SerialInput {
            held: true,
            queue: saved
                .map(|st| st.serial_input.iter().copied().collect())
                .unwrap_or_default(),
        }),
        serial_room: Condvar::new(),
        kbd_irq: IrqFdTrigger(kbd_irq),
        unhandled_io: Default::default(),
        unhandled_mmio: Default::default(),
        notify_exits: Default::default(),
    });
    Ok(Board {
        devices,
        relays,
        cmdline,
        console_host,
        disks,
    })
}

/// Creates vCPU `i` with `cpuid` (before any register: KVM checks
/// EFER.LME and friends against it).
fn create_vcpu(vm: &Vm, cpuid: &kvm_bindings::CpuId, i: usize) -> Result<VcpuFd> {
    let vcpu = vm.fd.create_vcpu(i as u64).map_err(|source| Error::Kvm {
        what: "KVM_CREATE_VCPU",
        source,
    })?;
    vcpu.set_cpuid2(cpuid).map_err(|source| Error::Kvm {
        what: "KVM_SET_CPUID2",
        source,
    })?;
    Ok(vcpu)
}

/// Builds the machine described by `cfg`, loads its kernel and starts its
/// vCPUs; returns a handle to pause, snapshot, resume and wait for it.
pub fn start(cfg: MachineConfig) -> Result<RunningMachine> {
    let mut cfg = cfg;
    check(&cfg)?;
    let kvm = open_kvm(&cfg.kvm_path)?;
    // Recognise the kernel before building anything.
    boot::identify_file(&cfg.kernel, &cfg.kernel_name)?;
    let summary = summary(&cfg);
    let vm = create_vm(kvm, cfg.mem_size, true)?;
    let mem = vm.ram.memory().clone();
    let mut board = build_devices(&vm, &mut cfg, None)?;
    let mut cmdline = cfg.cmdline.clone();
    if !board.cmdline.is_empty() {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&std::mem::take(&mut board.cmdline));
    }

    // Load.
    let kernel = boot::load_kernel(&mem, cfg.mem_size, &cfg.kernel, &cfg.kernel_name)?;
    cfg.kernel = BootFile::Bytes(Vec::new());
    boot::write_boot_params(
        &mem,
        &kernel,
        &BootSetup {
            mem_size: cfg.mem_size,
            cmdline: &cmdline,
            initrd: cfg.initrd.as_ref(),
        },
    )?;
    cpu::write_boot_tables(&mem, false)?;
    mptable::write(&mem, cfg.vcpus)?;
    // ACPI too: kernels without virtio_mmio's command-line devices
    // (Debian's) find the slots in its DSDT.
    let acpi_slots: Vec<_> = (board.devices.virtio.iter().enumerate())
        .map(|(i, s)| acpi::VirtioMmio {
            base: s.base,
            gsi: VIRTIO_IRQ_BASE + i as u32,
        })
        .collect();
    acpi::write(&mem, cfg.vcpus, &acpi_slots)?;

    // vCPUs: all get the entry state; KVM keeps the application
    // processors waiting for INIT/SIPI from the bootstrap one (its LAPIC
    // is the only one that starts runnable).
    let base_cpuid = cpu::supported_cpuid(&vm.kvm)?;
    let mut vcpus = Vec::with_capacity(cfg.vcpus);
    for i in 0..cfg.vcpus {
        let mut cpuid = base_cpuid.clone();
        cpu::filter_cpuid(&mut cpuid, i as u32, cfg.vcpus as u32);
        let vcpu = create_vcpu(&vm, &cpuid, i)?;
        cpu::setup_registers(
            &vcpu,
            Entry {
                rip: kernel.entry,
                rsi: ZERO_PAGE,
                user: false,
            },
        )?;
        cpu::setup_lint(&vcpu)?;
        vcpus.push(vcpu);
    }
    launch(vm, board, vcpus, summary, &cfg, false)
}

/// Builds a machine from a snapshot (the state file `state_path` and the
/// memory file `mem_path`, as [`RunningMachine::snapshot`] wrote them) and
/// runs it from the snapshot's instant (left paused when `paused`:
/// [`RunningMachine::resume`] starts it).
///
/// `cfg` supplies what a snapshot cannot hold: the disks' and NICs'
/// backends, the serial port's output and input, the time limit. Its
/// vCPUs, RAM size and devices must match the snapshot's (else
/// [`Error::SnapshotMismatch`] says what differs); its kernel, initrd and
/// command line are not used. A riscv64 snapshot is refused by name.
/// RAM is the memory file mapped `MAP_PRIVATE`: pages are read on first
/// touch and the guest's writes never reach the file.
pub fn restore(
    cfg: MachineConfig,
    state_path: &Path,
    mem_path: &Path,
    paused: bool,
) -> Result<RunningMachine> {
    let mut cfg = cfg;
    let st = snapshot::read(state_path)?;
    check(&cfg)?;
    if st.serial_input.len() > crate::devices::SERIAL_INPUT_CAPACITY {
        return Err(Error::SnapshotState(format!(
            "{} bytes of pending serial input, more than the {}-byte queue",
            st.serial_input.len(),
            crate::devices::SERIAL_INPUT_CAPACITY
        )));
    }
    let summary = summary(&cfg);
    if let Some(what) = st.machine.mismatch(&summary) {
        return Err(Error::SnapshotMismatch(what));
    }
    let kvm = open_kvm(&cfg.kvm_path)?;
    // A disk that cannot be reverted does not fit the snapshot either.
    vmm::board::revert_disks(&cfg.disks, &st.disks, &st.machine.disk_sizes)
        .map_err(|e| Error::SnapshotMismatch(e.to_string()))?;
    let ram = GuestRam::from_file(0, mem_path, cfg.mem_size as usize)?;
    let vm = create_vm_with_ram(kvm, ram, true)?;
    let board = build_devices(&vm, &mut cfg, Some(&st))?;
    // Each vCPU gets the CPUID its guest saw, not this host's.
    let mut vcpus = Vec::with_capacity(cfg.vcpus);
    for (i, s) in st.vcpus.iter().enumerate() {
        let cpuid =
            snapshot::saved_cpuid(s).map_err(|e| Error::SnapshotState(format!("vCPU {i}: {e}")))?;
        vcpus.push(create_vcpu(&vm, &cpuid, i)?);
    }
    snapshot::restore_vm(&vm.fd, &st.vm)?;
    for (i, (vcpu, s)) in vcpus.iter().zip(&st.vcpus).enumerate() {
        snapshot::restore_vcpu(vcpu, s)
            .map_err(|e| Error::SnapshotState(format!("vCPU {i}: {e}")))?;
    }
    replay_interrupts(&vm, &st)?;
    launch(vm, board, vcpus, summary, &cfg, paused)
}

/// Raises the serial port's and the keyboard's interrupts again when
/// they hold bytes the guest has not read. The edge that announced them
/// may be missing from the saved vCPU state (it can reach a LAPIC after
/// its vCPU parked); a spurious one costs the guest's driver a status
/// read. Done through KVM_IRQ_LINE, which delivers before any vCPU runs.
fn replay_interrupts(vm: &Vm, st: &MachineState) -> Result<()> {
    const IER_RDA: u8 = 0x01;
    let serial = !st.serial.in_buffer.is_empty() && st.serial.interrupt_enable & IER_RDA != 0;
    for (gsi, on) in [(COM1_IRQ, serial), (KBD_IRQ, st.i8042.wants_interrupt())] {
        if on {
            for level in [true, false] {
                vm.fd
                    .set_irq_line(gsi, level)
                    .map_err(|source| Error::Kvm {
                        what: "KVM_IRQ_LINE",
                        source,
                    })?;
            }
        }
    }
    Ok(())
}

/// The VM configuration a snapshot recorded for its restorer (see
/// [`RunningMachine::snapshot_with_config`]), if any.
pub fn snapshot_config(state_path: &Path) -> Result<Option<serde_json::Value>> {
    Ok(snapshot::read(state_path)?.vm_config)
}

/// Starts the device workers, one thread per vCPU and the serial input.
fn launch(
    vm: Vm,
    board: Board,
    vcpus: Vec<VcpuFd>,
    summary: MachineSummary,
    cfg: &MachineConfig,
    paused: bool,
) -> Result<RunningMachine> {
    // A restored device runs again only now that the whole board
    // (interrupt controllers included) is back.
    for slot in &board.devices.virtio {
        slot.transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resume()
            .map_err(|e| Error::SnapshotState(format!("resuming a virtio device: {e}")))?;
    }
    let msrs = Arc::new(snapshot::msr_list(&vm.kvm)?);
    let power = Arc::new(Power {
        reason: Mutex::new(None),
        cv: Condvar::new(),
    });
    let n = vcpus.len();
    let ctl = Arc::new(Control {
        pause: AtomicBool::new(paused),
        parking: Mutex::new(Parking {
            parked: 0,
            states: vec![None; n],
            reread: 0,
            reread_done: 0,
        }),
        cv: Condvar::new(),
    });
    let kick = kick_signal()?;
    let m = RunningMachine {
        devices: board.devices,
        relays: Mutex::new(board.relays),
        _console_host: board.console_host,
        disks: board.disks,
        power,
        ctl,
        summary,
        threads: Mutex::new(Vec::new()),
        input: Mutex::new(None),
        kick,
        timeout: cfg.timeout,
        clock: vmm::RunClock::new(paused),
        ops: Mutex::new(()),
        outcome: Mutex::new(None),
        vm,
    };
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let (devices, power, ctl, msrs) = (
            m.devices.clone(),
            m.power.clone(),
            m.ctl.clone(),
            msrs.clone(),
        );
        let in_loop = Arc::new(AtomicBool::new(true));
        let left = in_loop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let mut vcpu = vcpu;
                vcpu_loop(&mut vcpu, i, &devices, &power, &ctl, &msrs);
                // Before the vCPU fd's close, which can take a while
                // (a nested KVM): the stopper kicks no longer.
                left.store(false, Ordering::Release);
            })
            .map_err(|e| {
                m.power
                    .stop(StopReason::Fatal("vCPU thread start failed".into()));
                Error::Io("spawning a vCPU thread", e)
            })?;
        m.lock_threads().push(VcpuThread { handle, in_loop });
    }
    if let Some(fd) = cfg.input {
        let input_stop = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
        let stop = input_stop
            .try_clone()
            .map_err(|e| Error::Io("eventfd", e))?;
        let t = spawn_input(fd, stop, m.devices.clone(), m.power.clone())?;
        *m.input.lock().unwrap_or_else(|e| e.into_inner()) = Some((t, input_stop));
    }
    if paused {
        m.wait_parked()?;
    } else {
        m.devices.hold_serial_input(false);
    }
    Ok(m)
}

/// What a parked vCPU left behind.
struct Parking {
    parked: usize,
    /// Each vCPU's state at its last pause (or why it could not be read).
    states: Vec<Option<std::result::Result<VcpuState, String>>>,
    /// Raised once the devices are paused, so that every parked vCPU
    /// reads its state again: an interrupt a device raised between a
    /// vCPU's parking and the devices' pause reached that vCPU's local
    /// APIC after its first reading (see `RunningMachine::wait_parked`).
    reread: u64,
    /// vCPUs that have read their state again since `reread` was raised.
    reread_done: usize,
}

/// The pause latch the vCPU threads park on.
struct Control {
    pause: AtomicBool,
    parking: Mutex<Parking>,
    cv: Condvar,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, Parking> {
        self.parking.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A started machine: its vCPUs run on their own threads until the guest
/// resets, the user quits or the time limit passes. Every method takes
/// `&self`, so a control thread (an API server) can pause, snapshot and
/// resume it while another waits for it.
pub struct RunningMachine {
    devices: Arc<Devices>,
    relays: Mutex<Vec<Relay>>,
    _console_host: Option<virtio::ConsoleHost>,
    /// The disks, for snapshots.
    disks: Vec<Disk>,
    power: Arc<Power>,
    ctl: Arc<Control>,
    summary: MachineSummary,
    threads: Mutex<Vec<VcpuThread>>,
    input: Mutex<Option<(JoinHandle<()>, EventFd)>>,
    kick: i32,
    timeout: Option<Duration>,
    /// Running time, pauses left out: what `timeout` limits.
    clock: vmm::RunClock,
    /// Serialises pause, resume, snapshot and teardown.
    ops: Mutex<()>,
    /// Set once torn down.
    outcome: Mutex<Option<Outcome>>,
    // Last: the VM (and its RAM) outlive every thread and device above.
    vm: Vm,
}

impl RunningMachine {
    fn lock_threads(&self) -> MutexGuard<'_, Vec<VcpuThread>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_ops(&self) -> MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the machine stopped, once it has.
    pub fn stopped(&self) -> Option<StopReason> {
        self.power
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the machine for `reason` (the first reason wins).
    pub fn stop(&self, reason: StopReason) {
        self.power.stop(reason);
    }

    /// Presses and releases Ctrl+Alt+Del on the i8042 keyboard and raises
    /// IRQ 1 for the first byte (the control API's `SendCtrlAltDel`, as
    /// Firecracker's); Linux's keyboard driver answers with a reboot.
    /// On a paused machine the keys wait in the controller until it runs
    /// (a snapshot keeps them, and its restore raises the interrupt anew).
    pub fn send_ctrl_alt_del(&self) -> Result<()> {
        let _op = self.lock_ops();
        if self.power.is_stopped() {
            return Err(Error::NotRunning(self.stopped()));
        }
        let effect = self
            .devices
            .i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ctrl_alt_del()?;
        if effect == crate::i8042::Effect::Interrupt {
            self.devices.kbd_interrupt();
        }
        Ok(())
    }

    /// Bytes of host input waiting for room in the serial port's FIFO
    /// (or for the resume of a paused machine).
    pub fn serial_input_queued(&self) -> usize {
        self.devices
            .serial_input
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue
            .len()
    }

    /// Whether the machine is paused.
    pub fn is_paused(&self) -> bool {
        self.ctl.pause.load(Ordering::Acquire)
    }

    /// The configuration a snapshot of this machine records.
    pub fn summary(&self) -> &MachineSummary {
        &self.summary
    }

    /// Takes every vCPU out of KVM_RUN (any I/O it was in completed) and
    /// parks it with its state read, then quiesces the virtio devices
    /// (each finishes the request it is on). A no-op if already paused.
    pub fn pause(&self) -> Result<()> {
        let _op = self.lock_ops();
        if self.power.is_stopped() {
            return Err(Error::NotRunning(self.stopped()));
        }
        if self.is_paused() {
            return Ok(());
        }
        // Host input waits outside the device until the resume.
        self.devices.hold_serial_input(true);
        self.ctl.pause.store(true, Ordering::Release);
        self.wait_parked()?;
        self.clock.pause();
        Ok(())
    }

    /// The second half of a pause, once the latch is set: knocks the vCPU
    /// threads out of KVM_RUN until all have parked, then pauses the
    /// devices.
    fn wait_parked(&self) -> Result<()> {
        let n = self.lock_threads().len();
        loop {
            {
                let p = self.ctl.lock();
                if p.parked == n || self.power.is_stopped() {
                    break;
                }
            }
            // A signal can land just before a thread enters KVM_RUN;
            // knocking again until it parks covers that.
            for t in self.lock_threads().iter() {
                t.kick(self.kick);
            }
            let p = self.ctl.lock();
            let _ = self
                .ctl
                .cv
                .wait_timeout(p, Duration::from_millis(2))
                .unwrap_or_else(|e| e.into_inner());
        }
        if self.power.is_stopped() {
            self.ctl.pause.store(false, Ordering::Release);
            return Err(Error::NotRunning(self.stopped()));
        }
        for slot in &self.devices.virtio {
            slot.transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pause();
        }
        // A device could still finish a request and interrupt (irqfd)
        // until its pause above; the local APIC that took it was read
        // when its vCPU parked. Every vCPU reads its state again now that
        // nothing can interrupt, so a snapshot holds those interrupts.
        let mut p = self.ctl.lock();
        p.reread += 1;
        p.reread_done = 0;
        self.ctl.cv.notify_all();
        while p.reread_done < n && !self.power.is_stopped() {
            p = self
                .ctl
                .cv
                .wait_timeout(p, Duration::from_millis(2))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(p);
        if self.power.is_stopped() {
            self.ctl.pause.store(false, Ordering::Release);
            return Err(Error::NotRunning(self.stopped()));
        }
        Ok(())
    }

    /// Runs a paused machine again from where it stopped. A no-op if it
    /// is not paused.
    pub fn resume(&self) -> Result<()> {
        let _op = self.lock_ops();
        if !self.is_paused() {
            return Ok(());
        }
        if self.power.is_stopped() {
            return Err(Error::NotRunning(self.stopped()));
        }
        for slot in &self.devices.virtio {
            slot.transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .resume()
                .map_err(|e| Error::SnapshotState(format!("resuming a virtio device: {e}")))?;
        }
        {
            let _p = self.ctl.lock();
            self.ctl.pause.store(false, Ordering::Release);
            self.ctl.cv.notify_all();
        }
        self.devices.hold_serial_input(false);
        self.clock.resume();
        Ok(())
    }

    /// Writes a snapshot of the paused machine: its state to `state_path`,
    /// its RAM to `mem_path` (sparse). The machine stays paused.
    pub fn snapshot(&self, state_path: &Path, mem_path: &Path) -> Result<()> {
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
    ) -> Result<()> {
        let _op = self.lock_ops();
        if !self.is_paused() || self.power.is_stopped() {
            return Err(Error::NotPaused);
        }
        if state_path == mem_path {
            return Err(Error::SnapshotState(format!(
                "the state file and the memory file are both {}",
                state_path.display()
            )));
        }
        if let Some(index) = vmm::board::unsnapshottable_disk(&self.disks) {
            return Err(Error::WritableDiskSnapshot { index });
        }
        let vcpus = self
            .ctl
            .lock()
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Some(Ok(s)) => Ok(s.clone()),
                Some(Err(e)) => Err(Error::SnapshotState(format!(
                    "cannot read the state of vCPU {i}: {e}"
                ))),
                None => Err(Error::NotPaused),
            })
            .collect::<Result<Vec<_>>>()?;
        let serial = self
            .devices
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state()
            .into();
        let virtio = self
            .devices
            .virtio
            .iter()
            .map(|s| {
                s.transport
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .save()
                    .map_err(|e| Error::SnapshotState(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let serial_input = self
            .devices
            .serial_input
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue
            .iter()
            .copied()
            .collect();
        let disks = vmm::board::snapshot_disks(&self.disks)
            .map_err(|e| Error::SnapshotState(e.to_string()))?;
        let state = MachineState {
            version: snapshot::MACHINE_STATE_VERSION,
            machine: self.summary.clone(),
            vcpus,
            vm: snapshot::save_vm(&self.vm.fd)?,
            serial,
            serial_input,
            i8042: self
                .devices
                .i8042
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            virtio,
            disks,
            vm_config,
        };
        let result = vmm::snapshot::write_memory(mem_path, &self.vm.ram)
            .and_then(|()| vmm::snapshot::write_state(state_path, &state));
        if result.is_err() {
            // Leave no orphaned internal snapshots behind.
            vmm::board::delete_disk_snapshots(&self.disks, &state.disks);
        }
        Ok(result?)
    }

    /// Waits until the machine stops (or its time limit passes), tears it
    /// down (threads joined, device workers stopped) and returns why it
    /// stopped. Later calls return the same outcome.
    pub fn wait(&self) -> Result<Outcome> {
        // The time limit counts running time only: a paused machine's
        // clock stands still.
        if let Some(limit) = self.timeout {
            let stopped = self.clock.wait_limit(limit, |d| self.power.wait_for(d));
            if stopped.is_none() {
                self.power.stop(StopReason::Timeout);
            }
        }
        let reason = self.power.wait();
        let _op = self.lock_ops();
        let mut outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = outcome.as_ref() {
            return Ok(o.clone());
        }
        let threads = std::mem::take(&mut *self.lock_threads());
        stop_threads(threads, self.kick);
        if let Some((t, stop)) = self.input.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Wake its poll so that it sees the stop at once.
            let _ = stop.write(1);
            let _ = t.join();
        }
        // Devices stop before the RAM and the VM go away.
        self.relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for slot in &self.devices.virtio {
            slot.transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .shutdown();
        }
        let _ = self
            .devices
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .writer_mut()
            .flush();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let o = Outcome {
            reason,
            unhandled_io: load(&self.devices.unhandled_io),
            unhandled_mmio: load(&self.devices.unhandled_mmio),
            notify_exits: load(&self.devices.notify_exits),
        };
        *outcome = Some(o.clone());
        Ok(o)
    }
}

impl Drop for RunningMachine {
    /// A machine dropped while running is stopped and torn down first, so
    /// no thread outlives it.
    fn drop(&mut self) {
        self.power.stop(StopReason::Quit);
        let _ = self.wait();
    }
}

/// The real-time signal that knocks a vCPU thread out of KVM_RUN.
fn kick_signal() -> Result<i32> {
    extern "C" fn nothing(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    let sig = vmm_sys_util::signal::SIGRTMIN();
    // Installing the same empty handler again (a second machine in this
    // process) is harmless.
    vmm_sys_util::signal::register_signal_handler(sig, nothing)
        .map_err(|e| Error::Io("installing the vCPU kick signal handler", e.into()))?;
    Ok(sig)
}

/// A vCPU thread, and whether it is still in its run loop (where a stop
/// or a pause must knock it out of KVM_RUN).
pub(crate) struct VcpuThread {
    handle: JoinHandle<()>,
    in_loop: Arc<AtomicBool>,
}

impl VcpuThread {
    /// Whether it may still be in KVM_RUN.
    fn running(&self) -> bool {
        self.in_loop.load(Ordering::Acquire) && !self.handle.is_finished()
    }

    /// Knocks it out of KVM_RUN, if it may be there.
    fn kick(&self, sig: i32) {
        if self.running() {
            // SAFETY: the thread has not been joined (self owns its
            // handle), so its pthread_t is valid; the signal has a handler
            // that does nothing.
            unsafe { libc::pthread_kill(self.handle.as_pthread_t(), sig) };
        }
    }
}

/// Knocks every vCPU thread out of KVM_RUN until it notices the stop.
/// (A signal can arrive just before a thread enters KVM_RUN; knocking
/// again until it leaves its loop covers that.) A thread that has left it
/// is only joined: knocking it while it closes its vCPU fd, which a nested
/// KVM makes slow, only slowed that down.
pub(crate) fn stop_threads(threads: Vec<VcpuThread>, sig: i32) {
    for t in threads {
        // A thread out of KVM_RUN leaves within microseconds: wait that
        // long first, and longer only for one that is slow to notice
        // (a fixed millisecond per thread was most of a tiny guest's
        // shutdown).
        let mut pause = Duration::from_micros(20);
        while t.running() {
            t.kick(sig);
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        let _ = t.handle.join();
    }
}

/// What one exit asks for, once the exit's borrow of the vCPU has ended.
enum Next {
    Continue,
    Stop(StopReason),
    /// Stop with this message and the guest's registers.
    Fault(String),
    InternalError,
}

/// Stops the machine if a vCPU thread ends without having stopped it
/// (a panic unwinding through it): the main thread must not wait forever.
struct StopOnExit<'a>(&'a Power, usize);

impl Drop for StopOnExit<'_> {
    fn drop(&mut self) {
        // The first reason wins: after a normal stop this changes nothing.
        self.0.stop(StopReason::Fatal(format!(
            "vCPU {} thread ended unexpectedly",
            self.1
        )));
    }
}

fn vcpu_loop(
    vcpu: &mut VcpuFd,
    index: usize,
    devices: &Devices,
    power: &Power,
    ctl: &Control,
    msrs: &[u32],
) {
    let _guard = StopOnExit(power, index);
    loop {
        if power.is_stopped() {
            return;
        }
        if ctl.pause.load(Ordering::Acquire) {
            park(vcpu, index, power, ctl, msrs);
            continue;
        }
        let next = match vcpu.run() {
            Ok(exit) => handle_exit(exit, index, devices),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Fault(format!("KVM_RUN failed: {e}")),
        };
        if let Some(reason) = stop_reason(vcpu, index, next) {
            return power.stop(reason);
        }
    }
}

/// Parks a vCPU for a pause: first one KVM_RUN with `immediate_exit` set,
/// which completes an I/O instruction whose exit was just handled
/// (otherwise its result would be lost from the saved registers) and
/// returns before running guest code; then its state is read for a
/// snapshot and the thread waits for the resume.
fn park(vcpu: &mut VcpuFd, index: usize, power: &Power, ctl: &Control, msrs: &[u32]) {
    vcpu.set_kvm_immediate_exit(1);
    let r = vcpu.run().err().map(|e| e.errno());
    vcpu.set_kvm_immediate_exit(0);
    let state = match r {
        Some(libc::EINTR) => snapshot::save_vcpu(vcpu, msrs).map_err(|e| e.to_string()),
        Some(errno) => Err(format!(
            "KVM_RUN with immediate_exit failed: {}",
            std::io::Error::from_raw_os_error(errno)
        )),
        None => Err("KVM_RUN with immediate_exit ran the guest".into()),
    };
    let mut p = ctl.lock();
    p.states[index] = Some(state);
    p.parked += 1;
    let mut reread = p.reread;
    ctl.cv.notify_all();
    while ctl.pause.load(Ordering::Acquire) && !power.is_stopped() {
        if p.reread != reread {
            // Read again once the devices are paused (see Parking::reread);
            // a state that could not be read the first time stays an error.
            reread = p.reread;
            if matches!(p.states[index], Some(Ok(_))) {
                drop(p);
                let state = snapshot::save_vcpu(vcpu, msrs).map_err(|e| e.to_string());
                p = ctl.lock();
                p.states[index] = Some(state);
            }
            p.reread_done += 1;
            ctl.cv.notify_all();
            continue;
        }
        // Polled: the stop latch has its own condition variable.
        p = ctl
            .cv
            .wait_timeout(p, Duration::from_millis(50))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    p.parked -= 1;
}

/// How the machine stops after `next`, if it does.
fn stop_reason(vcpu: &mut VcpuFd, index: usize, next: Next) -> Option<StopReason> {
    match next {
        Next::Continue => None,
        Next::Stop(reason) => Some(reason),
        Next::Fault(what) => {
            let regs = cpu::describe(vcpu);
            Some(StopReason::Fatal(format!("vCPU {index}: {what}; {regs}")))
        }
        Next::InternalError => {
            // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member
            // of the kvm_run union is the one KVM filled in.
            let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
            let kind = match sub {
                1 => " (instruction emulation failed)",
                2 => " (exception while delivering an event)",
                3 => " (delivery of an event failed)",
                _ => "",
            };
            let regs = cpu::describe(vcpu);
            Some(StopReason::Fatal(format!(
                "vCPU {index}: KVM internal error {sub}{kind}; {regs}"
            )))
        }
    }
}

fn handle_exit(exit: VcpuExit<'_>, index: usize, devices: &Devices) -> Next {
    let bad = |kind: &str, addr: u64, len: usize| {
        Next::Fault(format!(
            "{kind} of {len} bytes at {addr:#x}: no such access size"
        ))
    };
    match exit {
        VcpuExit::IoOut(port, data) => match devices.port_out(port, data) {
            Ok(Action::Continue) => Next::Continue,
            Ok(Action::Reset) => Next::Stop(StopReason::Reset),
            Err(b) => bad("port write", port as u64, b.len),
        },
        VcpuExit::IoIn(port, data) => match devices.port_in(port, data) {
            Ok(()) => Next::Continue,
            Err(b) => bad("port read", port as u64, b.len),
        },
        VcpuExit::MmioRead(addr, data) => match devices.mmio_read(addr, data) {
            Ok(()) => Next::Continue,
            Err(b) => bad("MMIO read", addr, b.len),
        },
        VcpuExit::MmioWrite(addr, data) => match devices.mmio_write(addr, data) {
            Ok(()) => Next::Continue,
            Err(b) => bad("MMIO write", addr, b.len),
        },
        VcpuExit::Intr => Next::Continue,
        VcpuExit::Shutdown => Next::Fault("triple fault (KVM_EXIT_SHUTDOWN)".into()),
        VcpuExit::Hlt => Next::Fault("halted with no interrupt source (KVM_EXIT_HLT)".into()),
        VcpuExit::SystemEvent(kind, _) => Next::Stop(StopReason::SystemEvent { vcpu: index, kind }),
        VcpuExit::FailEntry(reason, cpu) => Next::Fault(format!(
            "KVM could not enter the guest (hardware reason {reason:#x}, host cpu {cpu})"
        )),
        VcpuExit::InternalError => Next::InternalError,
        other => Next::Fault(format!("unexpected KVM exit {other:?}")),
    }
}

/// Reads the host's input into the serial port; Ctrl-A x quits, Ctrl-A
/// Ctrl-A sends a Ctrl-A (QEMU's escapes). Ends at EOF, or when `stop`
/// is signalled after the machine stopped.
fn spawn_input(
    fd: RawFd,
    stop: EventFd,
    devices: Arc<Devices>,
    power: Arc<Power>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("serial-input".into())
        .spawn(move || {
            let mut escape = false;
            let mut buf = [0u8; 256];
            while !power.is_stopped() {
                let mut pfds = [
                    libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: stop.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfds in an array we own.
                let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
                if n <= 0 || pfds[1].revents != 0 {
                    continue;
                }
                if pfds[0].revents == 0 {
                    continue;
                }
                // SAFETY: reads into a buffer we own, of its length.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    return;
                }
                let mut out = Vec::with_capacity(n as usize);
                for &b in &buf[..n as usize] {
                    match (escape, b) {
                        (false, 0x01) => escape = true,
                        (true, b'x') => return power.stop(StopReason::Quit),
                        (true, b) => {
                            escape = false;
                            out.push(b);
                        }
                        (false, b) => out.push(b),
                    }
                }
                crate::devices::serial_input(&devices, &out, &|| power.is_stopped());
            }
        })
        .map_err(|e| Error::Io("spawning the serial input thread", e))
}
