//! Minimal runner for developing linux-user without the whole `virtkit`
//! binary: `emu [emu user] [-L SYSROOT] [-0 ARGV0] [--strace] PROGRAM ARGS...`
//! (it accepts the arguments virtkit re-executes itself with).

use std::os::unix::ffi::OsStrExt;

fn main() {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.len() >= 2 && args[0] == "emu" && args[1] == "user" {
        args.drain(..2);
    }
    let mut cfg = linux_user::Config {
        self_exe: std::env::current_exe().expect("current exe"),
        ..Default::default()
    };
    let mut argv0 = None;
    while let Some(a) = args.first().cloned() {
        match a.to_str() {
            Some("-L") => {
                cfg.sysroot = Some(args[1].clone().into());
                args.drain(..2);
            }
            Some("-0") => {
                argv0 = Some(args[1].clone());
                args.drain(..2);
            }
            Some("--strace") => {
                cfg.strace = true;
                args.remove(0);
            }
            Some("--no-jit") => {
                cfg.jit = false;
                args.remove(0);
            }
            _ => break,
        }
    }
    let Some(program) = args.first().cloned() else {
        eprintln!("usage: emu [-L SYSROOT] PROGRAM ARGS...");
        std::process::exit(2);
    };
    let mut argv: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
    if let Some(a0) = argv0 {
        argv[0] = a0.as_bytes().to_vec();
    }
    let envp = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            b
        })
        .collect();
    // `run` only returns when the program could not be started.
    let Err(e) = linux_user::run(cfg, program.as_ref(), argv, envp);
    eprintln!("emu: {e}");
    std::process::exit(1);
}
