//! riscv-machine: the RISC-V boards of virtkit.
//!
//! - `virt`: QEMU's `virt` board memory map: RAM at 0x8000_0000, CLINT,
//!   PLIC, 16550 UART, virtio-mmio slots, the `sifive,test` finisher; a
//!   generated device tree; Linux booted directly with a built-in SBI or
//!   through OpenSBI.
//! - `spike`: a bare-metal ELF started in M-mode with HTIF console and exit.
//!
//! The harts come from the `riscv` crate, one host thread each.

pub mod clint;
pub mod fdt;
pub mod htif;
pub mod irq;
pub mod layout;
pub mod loader;
pub mod machine;
pub mod mmio;
pub mod plic;
pub mod power;
pub mod sbi;
pub mod snapshot;
pub mod terminal;
pub mod uart;
pub mod vmgenid;
