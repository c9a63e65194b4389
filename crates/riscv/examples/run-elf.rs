//! `cargo run --release -p riscv --example run-elf -- PROGRAM [ARGS]`: runs a
//! static riscv64 program that only needs read/write/exit (the CPU
//! benchmark's compute kernel), printing its output; exits with its status.

mod common;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: run-elf PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    match common::run_file(path, &argv, true) {
        Ok(o) => {
            if std::env::var_os("RUN_ELF_STATS").is_some() {
                eprintln!("run-elf: {} instructions retired", o.instret);
            }
            if let Some(c) = o.crash {
                eprintln!("run-elf: guest stopped: {c:?}");
            }
            std::process::exit(o.status);
        }
        Err(e) => {
            eprintln!("run-elf: {e}");
            std::process::exit(2);
        }
    }
}
