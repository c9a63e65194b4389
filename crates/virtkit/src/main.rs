//! The `virtkit` command line: argument parsing and output only.
//!
//! Every subcommand lives in its own module, which owns its clap arguments
//! and returns the process exit code; the logic lives in the library crates.

use clap::{Parser, Subcommand};

mod ctr;
mod emu;
mod guest;
mod img;
mod instant;
mod nic;
mod progress;
mod run;
mod run_x86;
mod vm;
mod vm_api;
mod vm_api_x86;
mod vm_x86;

#[derive(Parser)]
#[command(
    name = "virtkit",
    version,
    about = "One toolkit for every kind of virtualization",
    long_about = "virtkit: disk images (qcow2/raw), RISC-V user-mode emulation, \
                  RISC-V virtual machines and OCI containers, from one command line."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Each subcommand's arguments are built only when it is the one that
// runs: clap otherwise builds every command line of the toolkit (runc's,
// qemu-img's, ...) at every start, about 150 KB of heap and 300 KB of
// code paged in for a tiny VM that needs one of them.
#[command(defer = true)]
enum Command {
    /// Disk images: create, inspect, check, convert, snapshot... (like qemu-img)
    Img(img::Args),
    /// Process-level emulation: run a riscv64 Linux program (like qemu-riscv64)
    Emu(emu::Args),
    /// Boot the default Debian riscv64 guest and run a command in it
    Run(run::Args),
    /// Virtual machines with explicit kernel, firmware and disks
    Vm(vm::Args),
    /// Guest assets: Debian kernels, busybox, initramfs
    Guest(guest::Args),
    /// Containers: an OCI runtime with runc's command line
    Ctr(ctr::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Img(a) => img::main(a),
        Command::Emu(a) => emu::main(a),
        Command::Run(a) => run::main(a),
        Command::Vm(a) => vm::main(a),
        Command::Guest(a) => guest::main(a),
        Command::Ctr(a) => ctr::main(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("virtkit: {e:#}");
            std::process::exit(1);
        }
    }
}
