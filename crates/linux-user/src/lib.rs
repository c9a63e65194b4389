//! linux-user: run riscv64 Linux programs on an x86-64 Linux host, like
//! qemu-riscv64. The ELF loader, the guest address space, the syscall
//! translation, signals and threads; the CPU comes from the `riscv` crate.

pub mod abi;
mod clone;
pub mod elf;
mod exec;
pub mod loader;
pub mod mm;
pub mod process;
mod procfs;
pub mod signal;
mod syscall;

pub use process::{run, Config, StartError};
