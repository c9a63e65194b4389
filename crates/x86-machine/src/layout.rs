//! Guest-physical memory map of the x86-64 board (Firecracker's, where it
//! has one, so tools and habits carry over).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)           0x0000_0520  IDT (empty)
//! 0x0000_7000  boot_params (zero page)   0x0000_8ff0  initial stack
//! 0x0000_9000  PML4  0xa000 PDPT  0xb000..0xf000 four PDs (identity, 4 GiB)
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX)
//! 0x0009_fc00  MP table (in the "EBDA", reserved in the e820 map)
//! 0x0010_0000  high memory: kernels load here or above
//! ...          initrd at the top of RAM
//! 0xc000_0000  MMIO gap: virtio-mmio slots, then IOAPIC and LAPIC (KVM's)
//! ```

/// The GDT the monitor writes for the 64-bit entry.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT (limit 0): no exception is expected before the kernel sets its own.
pub const IDT_ADDR: u64 = 0x520;
/// Linux's zero page (`struct boot_params`), pointed to by rsi.
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial rsp/rbp, as Firecracker.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Page-map level 4 of the identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// The one page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of [`IDENTITY_GIB`] page directories (2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// How much the boot page tables identity-map: the whole 32-bit space, so
/// an early guest reaches its RAM and the MMIO gap alike.
pub const IDENTITY_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line (with its NUL), Linux's COMMAND_LINE_SIZE on x86.
pub const CMDLINE_MAX: usize = 2048;
/// MP floating pointer + configuration table.
pub const MPTABLE_ADDR: u64 = 0x9_fc00;
/// End of the low RAM the e820 map reports (the EBDA and the legacy
/// video/BIOS hole follow).
pub const LOW_RAM_END: u64 = MPTABLE_ADDR;
/// Where high memory starts; no kernel may load below it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO gap below 4 GiB: RAM ends here at the latest.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// First virtio-mmio slot.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Distance between virtio-mmio slots (one page each).
pub const VIRTIO_MMIO_STRIDE: u64 = 0x1000;
/// First IOAPIC pin given to virtio devices (Firecracker's choice; 4 is
/// the serial port's).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Most virtio devices: IOAPIC pins 5..=23.
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// KVM's in-kernel IOAPIC and LAPIC.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map (VT-x
/// real mode) somewhere no RAM is: just below the 4 GiB boundary's BIOS.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// Smallest RAM the board accepts: low memory, the boot structures and
/// 1 MiB above HIMEM_START for a kernel to live in.
pub const MIN_MEM: u64 = 2 << 20;
/// Largest RAM: one block below the MMIO gap.
pub const MAX_MEM: u64 = MMIO_GAP_START;
/// Serial port (COM1) and its IOAPIC pin.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// The i8042 keyboard controller's data and command ports.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_CMD_PORT: u16 = 0x64;
/// The keyboard's IOAPIC pin (ISA IRQ 1).
pub const KBD_IRQ: u32 = 1;
/// Most vCPUs: the MP table's and xAPIC ids' 8-bit range, and what the
/// board has been tested with well beyond.
pub const MAX_VCPUS: usize = 254;
