//! The physical memory map of QEMU's `virt` board, so that device trees,
//! firmware and guides written for it apply unchanged.

/// sifive,test finisher (power off / reset).
pub const TEST_BASE: u64 = 0x10_0000;
pub const TEST_SIZE: u64 = 0x1000;
/// CLINT: msip, mtimecmp, mtime.
pub const CLINT_BASE: u64 = 0x200_0000;
pub const CLINT_SIZE: u64 = 0x1_0000;
/// PLIC: priorities, pending, enables, thresholds, claim/complete.
pub const PLIC_BASE: u64 = 0xc00_0000;
pub const PLIC_SIZE: u64 = 0x60_0000;
/// 16550 UART.
pub const UART_BASE: u64 = 0x1000_0000;
pub const UART_SIZE: u64 = 0x100;
/// PLIC source of the UART.
pub const UART_IRQ: u32 = 10;
/// The VM generation ID device (16 bytes; see `vmgenid.rs`), in a hole of
/// QEMU's map (its board has no such device).
pub const VMGENID_BASE: u64 = 0x1020_0000;
pub const VMGENID_SIZE: u64 = 0x1000;
/// PLIC source of the VM generation ID device (QEMU's RTC uses 11).
pub const VMGENID_IRQ: u32 = 12;
/// First virtio-mmio slot; slots follow at [`VIRTIO_STRIDE`].
pub const VIRTIO_BASE: u64 = 0x1000_1000;
pub const VIRTIO_STRIDE: u64 = 0x1000;
/// Number of virtio-mmio slots, as on QEMU's board.
pub const VIRTIO_SLOTS: usize = 8;
/// PLIC source of virtio slot 0; slot i uses `VIRTIO_IRQ_BASE + i`.
pub const VIRTIO_IRQ_BASE: u32 = 1;
/// Start of RAM.
pub const RAM_BASE: u64 = 0x8000_0000;
/// Number of PLIC interrupt sources, including the reserved source 0
/// (QEMU's `riscv,ndev` is 0x60 = 96).
pub const PLIC_SOURCES: u32 = 96;
/// Timebase of mtime and the time CSR: 10 MHz, like QEMU.
pub const TIMEBASE_HZ: u64 = 10_000_000;
/// Where an RV64 Linux Image is loaded: RAM base + 2 MiB (its required
/// alignment, so the kernel's linear map can use 2 MiB pages).
pub const KERNEL_OFFSET: u64 = 0x20_0000;
/// Where OpenSBI's `fw_jump` for the generic platform (Debian's
/// `opensbi` package, 1.1 to 1.5 at least: `FW_JUMP_FDT_ADDR`, later
/// `FW_JUMP_FDT_OFFSET`) copies the device tree it received in a1 before
/// jumping to RAM + [`KERNEL_OFFSET`] (`FW_JUMP_ADDR`). The machine keeps
/// the initrd clear of this window whenever a firmware file runs.
pub const FW_JUMP_FDT_OFFSET: u64 = 0x220_0000;
/// Room kept for that copy (the board's device tree is a few KiB).
pub const FW_JUMP_FDT_ROOM: u64 = 0x20_0000;

/// Base address of virtio slot `i`.
pub fn virtio_base(i: usize) -> u64 {
    VIRTIO_BASE + VIRTIO_STRIDE * i as u64
}
