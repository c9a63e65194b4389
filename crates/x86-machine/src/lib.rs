//! The x86-64 board on KVM: a virtual machine monitor in the manner of
//! Firecracker.
//!
//! - One host thread per vCPU, each in its own `KVM_RUN` loop; port and
//!   MMIO exits go to the board's devices ([`devices`]); every other exit
//!   ends the run with a report that includes the guest's registers.
//! - Guest RAM is one [`vmm::GuestRam`] block at guest-physical 0 (at most
//!   3 GiB: the MMIO gap follows), shared with the device models.
//! - Boot ([`boot`], [`cpu`]): an ELF vmlinux at its physical addresses or
//!   a bzImage through its 64-bit entry, both via `linux-loader`; the
//!   monitor itself sets up long mode (GDT, identity page tables for the
//!   first 4 GiB, CR0/CR4/EFER) and enters with rsi pointing at the zero
//!   page (`boot_params`: e820 map, command line, initrd).
//! - CPUID is KVM's supported set filtered per vCPU (APIC id, topology,
//!   no nested virtualization, no PMU); KVM's in-kernel LAPIC/IOAPIC/PIC
//!   and PIT; an MP table ([`mptable`]) describes the CPUs to SMP guests,
//!   and ACPI tables ([`acpi`]) describe them, the serial port and the
//!   virtio-mmio slots to kernels that cannot take the slots from the
//!   command line (Debian's amd64 kernel).
//! - Devices: a 16550 at 0x3f8 (`vm-superio`) interrupting on pin 4 through
//!   an irqfd; an i8042 ([`i8042`]) that answers Linux's probe at once
//!   (keyboard on IRQ 1, no mouse), whose reset command (0xfe to port
//!   0x64) ends the run as a reset ([`StopReason::Reset`], exit status 0
//!   as in Firecracker); virtio-mmio devices from `crates/virtio` announced on
//!   the command line (`virtio_mmio.device=4K@ADDR:IRQ`), kicked through
//!   ioeventfds and interrupting through irqfds ([`irqfd`]).
//!   The network cards are `crates/virtio`'s virtio-net over `crates/net`'s
//!   backends (user-mode networking, tap), as on the riscv64 board.
//! - [`start`] returns a [`RunningMachine`]: pause (each vCPU thread leaves
//!   KVM_RUN through an immediate-exit run that completes a pending I/O
//!   instruction, reads its state and parks), resume, snapshot (vCPU,
//!   irqchip, PIT and clock state, the 16550 and the virtio transports in
//!   `vmm`'s state-file format, RAM in a sparse memory file, qcow2
//!   internal snapshots of read-write disks) and [`restore`] ([`snapshot`]).
//! - [`probe`] tells a KVM that emulates guest ring 0 (a paravirtualized
//!   nested KVM like this project's build machines') from one that runs
//!   it natively.
//!
//! The library prints nothing: serial output goes to the writer the
//! caller gives, and how the machine stopped comes back as an
//! [`Outcome`].

pub mod acpi;
pub mod boot;
pub mod cpu;
pub mod devices;
pub mod i8042;
pub mod irqfd;
pub mod layout;
pub mod machine;
pub mod mptable;
pub mod probe;
pub mod snapshot;

pub use boot::BootFile;
pub use machine::{
    restore, run, snapshot_config, start, Disk, MachineConfig, Nic, Outcome, RunningMachine,
    StopReason, DEFAULT_KVM_PATH,
};

/// Errors of the x86-64 board.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path}: {source} (KVM is needed for x86-64 guests: is the kvm module loaded and {path} accessible?)")]
    NoKvm {
        path: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{path} is not usable: {reason}")]
    KvmUnusable { path: String, reason: String },
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("kernel {name} {reason}")]
    Kernel { name: String, reason: String },
    #[error("{mem_size} bytes of RAM are too little for {what}: at least {need} are needed")]
    TooLittleMemory {
        mem_size: u64,
        need: u64,
        what: String,
    },
    #[error("invalid machine configuration: {0}")]
    Config(String),
    #[error("kernel command line: {0}")]
    CommandLine(String),
    #[error("writing guest memory: {0}")]
    GuestMemory(String),
    #[error("vCPU setup: {0}")]
    Setup(String),
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    #[error(transparent)]
    Ram(#[from] vmm::Error),
    #[error(transparent)]
    Snapshot(#[from] vmm::snapshot::SnapshotError),
    #[error("the snapshot does not fit this machine: {0}")]
    SnapshotMismatch(String),
    #[error("snapshot state: {0}")]
    SnapshotState(String),
    #[error("the machine is not paused: pause it before taking a snapshot")]
    NotPaused,
    #[error("the machine is not running{}", .0.as_ref().map(|r| format!(" (it stopped: {r:?})")).unwrap_or_default())]
    NotRunning(Option<StopReason>),
    #[error(transparent)]
    Keyboard(#[from] i8042::QueueFull),
    #[error("disk {index} is read-write and not a qcow2 image: a snapshot needs a qcow2 internal snapshot of a disk the guest can write; attach it read-only or use qcow2")]
    WritableDiskSnapshot { index: usize },
}

/// Result type of the x86-64 board.
pub type Result<T> = std::result::Result<T, Error>;
