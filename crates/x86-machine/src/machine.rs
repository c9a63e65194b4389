//! Building and running the machine: check, build (VM, RAM, irqchip,
//! devices), load (kernel, zero page, tables), start (one thread per
//! vCPU), wait for a stop, tear down.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm::GuestRam;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::{self, BootSetup};
use crate::cpu::{self, Entry};
use crate::devices::{Action, Devices, IrqFdTrigger, VirtioSlot};
use crate::irqfd::{self, IrqFdLine, Relay};
use crate::layout::*;
use crate::{acpi, mptable, Error, Result};

/// Where KVM is unless the caller says otherwise.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

/// A disk for a virtio-blk slot.
pub struct Disk {
    pub backend: Arc<dyn image::BlockBackend>,
    pub read_only: bool,
}

/// Everything the machine is made of.
pub struct MachineConfig {
    /// The KVM device (`/dev/kvm`; another path for a KVM elsewhere, or to
    /// check how a missing one is reported).
    pub kvm_path: PathBuf,
    pub vcpus: usize,
    pub mem_size: u64,
    /// ELF vmlinux (or small ELF64 guest) or bzImage.
    pub kernel: Vec<u8>,
    /// For messages.
    pub kernel_name: String,
    pub initrd: Option<Vec<u8>>,
    /// The command line; the board appends its `virtio_mmio.device=`s.
    pub cmdline: String,
    pub disks: Vec<Disk>,
    pub rng: bool,
    /// A virtio console whose output goes to `console_output`.
    pub virtio_console: Option<Box<dyn Write + Send>>,
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
#[derive(Debug)]
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
    fn wait(&self, timeout: Option<Duration>) -> StopReason {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(reason) = r.clone() {
                return reason;
            }
            match deadline {
                None => r = self.cv.wait(r).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        *r = Some(StopReason::Timeout);
                        continue;
                    }
                    r = self
                        .cv
                        .wait_timeout(r, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
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
    let ram = GuestRam::new(0, mem_size as usize)?;
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
    let devices = cfg.disks.len() + cfg.rng as usize + cfg.virtio_console.is_some() as usize;
    if devices > MAX_VIRTIO_DEVICES {
        return Err(Error::Config(format!(
            "{devices} virtio devices: the board has {MAX_VIRTIO_DEVICES} slots"
        )));
    }
    Ok(())
}

/// Boots the machine and runs it until it stops.
pub fn run(cfg: MachineConfig) -> Result<Outcome> {
    check(&cfg)?;
    let kvm = open_kvm(&cfg.kvm_path)?;
    // Recognise the kernel before building anything.
    boot::identify(&cfg.kernel, &cfg.kernel_name)?;
    let vm = create_vm(kvm, cfg.mem_size, true)?;
    let mem = vm.ram.memory().clone();

    // Devices.
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
    vm.fd
        .register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(|source| Error::Kvm {
            what: "KVM_IRQFD (serial)",
            source,
        })?;
    let mut virtio_devs: Vec<Box<dyn virtio::VirtioDevice>> = Vec::new();
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
    let mut _console_host = None;
    if let Some(out) = cfg.virtio_console {
        let (dev, host) = virtio::Console::new(out, None);
        _console_host = Some(host);
        virtio_devs.push(Box::new(dev));
    }
    let mut cmdline = cfg.cmdline.clone();
    let mut slots = Vec::new();
    let mut relays: Vec<Relay> = Vec::new();
    for (i, dev) in virtio_devs.into_iter().enumerate() {
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_STRIDE;
        let gsi = VIRTIO_IRQ_BASE + i as u32;
        let queues = dev.queue_max_sizes().len();
        let line = IrqFdLine::new(&vm.fd, gsi)?;
        let slot = Arc::new(VirtioSlot {
            base,
            transport: Mutex::new(virtio::MmioTransport::new(dev, mem.clone(), line.clone())),
        });
        relays.push(irqfd::start_relay(&vm.fd, slot.clone(), queues, line)?);
        slots.push(slot);
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&format!("virtio_mmio.device=4K@{base:#x}:{gsi}"));
    }
    let devices = Arc::new(Devices {
        serial: Mutex::new(vm_superio::Serial::new(
            IrqFdTrigger(serial_irq),
            cfg.output,
        )),
        virtio: slots,
        unhandled_io: Default::default(),
        unhandled_mmio: Default::default(),
        notify_exits: Default::default(),
    });

    // Load.
    let kernel = boot::load_kernel(&mem, cfg.mem_size, &cfg.kernel, &cfg.kernel_name)?;
    drop(cfg.kernel);
    boot::write_boot_params(
        &mem,
        &kernel,
        &BootSetup {
            mem_size: cfg.mem_size,
            cmdline: &cmdline,
            initrd: cfg.initrd.as_deref(),
        },
    )?;
    cpu::write_boot_tables(&mem, false)?;
    mptable::write(&mem, cfg.vcpus)?;
    // ACPI too: kernels without virtio_mmio's command-line devices
    // (Debian's) find the slots in its DSDT.
    let acpi_slots: Vec<_> = (devices.virtio.iter().enumerate())
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
        let vcpu = vm.fd.create_vcpu(i as u64).map_err(|source| Error::Kvm {
            what: "KVM_CREATE_VCPU",
            source,
        })?;
        let mut cpuid = base_cpuid.clone();
        cpu::filter_cpuid(&mut cpuid, i as u32, cfg.vcpus as u32);
        vcpu.set_cpuid2(&cpuid).map_err(|source| Error::Kvm {
            what: "KVM_SET_CPUID2",
            source,
        })?;
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

    let power = Arc::new(Power {
        reason: Mutex::new(None),
        cv: Condvar::new(),
    });
    let kick = kick_signal()?;
    let mut threads = Vec::with_capacity(vcpus.len());
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let (devices, power) = (devices.clone(), power.clone());
        let t = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || vcpu_loop(vcpu, i, &devices, &power))
            .map_err(|e| Error::Io("spawning a vCPU thread", e))?;
        threads.push(t);
    }
    let input_stop = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
    let input = match cfg.input {
        Some(fd) => {
            let stop = input_stop
                .try_clone()
                .map_err(|e| Error::Io("eventfd", e))?;
            Some(spawn_input(fd, stop, devices.clone(), power.clone())?)
        }
        None => None,
    };

    let reason = power.wait(cfg.timeout);
    stop_threads(threads, kick);
    if let Some(t) = input {
        // Wake its poll so that it sees the stop at once.
        let _ = input_stop.write(1);
        let _ = t.join();
    }
    // Devices stop before the RAM and the VM go away.
    drop(relays);
    for slot in &devices.virtio {
        slot.transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown();
    }
    let _ = devices
        .serial
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .writer_mut()
        .flush();
    Ok(Outcome {
        reason,
        unhandled_io: devices
            .unhandled_io
            .load(std::sync::atomic::Ordering::Relaxed),
        unhandled_mmio: devices
            .unhandled_mmio
            .load(std::sync::atomic::Ordering::Relaxed),
        notify_exits: devices
            .notify_exits
            .load(std::sync::atomic::Ordering::Relaxed),
    })
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

/// Knocks every vCPU thread out of KVM_RUN until it notices the stop.
/// (A signal can arrive just before a thread enters KVM_RUN; knocking
/// again until it ends covers that.)
pub(crate) fn stop_threads(threads: Vec<JoinHandle<()>>, sig: i32) {
    for t in threads {
        while !t.is_finished() {
            // SAFETY: the thread has not been joined, so its pthread_t is
            // valid; the signal has a handler that does nothing.
            unsafe { libc::pthread_kill(t.as_pthread_t(), sig) };
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = t.join();
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

fn vcpu_loop(mut vcpu: VcpuFd, index: usize, devices: &Devices, power: &Power) {
    let _guard = StopOnExit(power, index);
    loop {
        if power.is_stopped() {
            return;
        }
        let next = match vcpu.run() {
            Ok(exit) => handle_exit(exit, index, devices),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Fault(format!("KVM_RUN failed: {e}")),
        };
        match next {
            Next::Continue => {}
            Next::Stop(reason) => return power.stop(reason),
            Next::Fault(what) => {
                let regs = cpu::describe(&vcpu);
                return power.stop(StopReason::Fatal(format!("vCPU {index}: {what}; {regs}")));
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
                let regs = cpu::describe(&vcpu);
                return power.stop(StopReason::Fatal(format!(
                    "vCPU {index}: KVM internal error {sub}{kind}; {regs}"
                )));
            }
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
                crate::devices::serial_input(&devices, &out);
            }
        })
        .map_err(|e| Error::Io("spawning the serial input thread", e))
}
