//! execve: riscv64 programs run in a fresh virtkit, `#!` scripts through
//! their interpreter, anything else on the host.

use crate::loader;
use crate::process::Thread;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

impl Thread {
    /// execve: another riscv64 program runs in a fresh virtkit; a `#!`
    /// script runs its interpreter (itself emulated if riscv64); anything
    /// else is handed to the host kernel.
    pub(crate) fn execve(&mut self, path: Vec<u8>, argv: Vec<Vec<u8>>, envp: Vec<Vec<u8>>) -> i64 {
        // A vfork parent must see what this child wrote before the exec
        // replaces its memory (and again at exit if the exec fails).
        self.vfork_sync();
        let mut path = path;
        let mut argv = argv;
        for _depth in 0..4 {
            let host_path = self.host_path(&path);
            let hp = Path::new(std::ffi::OsStr::from_bytes(&host_path));
            // As the kernel's execve: anything but a regular file (a
            // directory, a fifo) is EACCES, and so is a file the effective
            // ids may not execute.
            match std::fs::metadata(hp) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return -(libc::EACCES as i64),
                Err(e) => return -(e.raw_os_error().unwrap_or(libc::ENOENT) as i64),
            }
            if let Err(e) = loader::exec_access(hp) {
                return -(e.raw_os_error().unwrap_or(libc::EACCES) as i64);
            }
            let mut head = [0u8; 256];
            let n = match std::fs::File::open(hp)
                .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
            {
                Ok(n) => n,
                Err(e) => return -(e.raw_os_error().unwrap_or(libc::ENOEXEC) as i64),
            };
            let head = &head[..n];
            if head.len() >= 20 && &head[..4] == b"\x7fELF" {
                let machine = u16::from_le_bytes([head[18], head[19]]);
                if machine == crate::elf::EM_RISCV {
                    return self.reexec(&host_path, argv, envp);
                }
                return host_execve(&host_path, &argv, &envp);
            }
            if head.starts_with(b"#!") {
                let line_end = head.iter().position(|&c| c == b'\n').unwrap_or(head.len());
                let line = &head[2..line_end];
                let line: Vec<u8> = line
                    .iter()
                    .copied()
                    .skip_while(|c| *c == b' ' || *c == b'\t')
                    .collect();
                let mut parts = line.splitn(2, |c| *c == b' ' || *c == b'\t');
                let interp = parts.next().unwrap_or(&[]).to_vec();
                let arg = parts
                    .next()
                    .map(|a| a.trim_ascii().to_vec())
                    .filter(|a| !a.is_empty());
                if interp.is_empty() {
                    return -(libc::ENOEXEC as i64);
                }
                let mut nargv = vec![interp.clone()];
                if let Some(a) = arg {
                    nargv.push(a);
                }
                nargv.push(path.clone());
                nargv.extend(argv.into_iter().skip(1));
                argv = nargv;
                path = interp;
                continue;
            }
            return host_execve(&host_path, &argv, &envp);
        }
        -(libc::ELOOP as i64)
    }

    fn reexec(&mut self, prog: &[u8], argv: Vec<Vec<u8>>, envp: Vec<Vec<u8>>) -> i64 {
        let cfg = &self.proc.cfg;
        let mut a: Vec<Vec<u8>> = vec![
            cfg.self_exe.as_os_str().as_bytes().to_vec(),
            b"emu".to_vec(),
            b"user".to_vec(),
        ];
        if let Some(root) = &cfg.sysroot {
            a.push(b"-L".to_vec());
            a.push(root.as_os_str().as_bytes().to_vec());
        }
        if cfg.strace {
            a.push(b"--strace".to_vec());
        }
        if !cfg.jit {
            a.push(b"--no-jit".to_vec());
        }
        // Always: the flag wins over a VIRTKIT_JIT_THRESHOLD in the
        // program's environment (which the new emulator process reads),
        // so the default chosen by a flag is passed on as well.
        a.push(format!("--jit-threshold={}", cfg.jit_threshold).into_bytes());
        if let Some(a0) = argv.first() {
            a.push(b"-0".to_vec());
            a.push(a0.clone());
        }
        a.push(prog.to_vec());
        a.extend(argv.into_iter().skip(1));
        let exe = cfg.self_exe.as_os_str().as_bytes().to_vec();
        host_execve(&exe, &a, &envp)
    }

    /// Maps a guest path to the host path: `/proc/self/exe` is the guest
    /// program; absolute paths go under the sysroot when they exist there.
    pub(crate) fn host_path(&self, p: &[u8]) -> Vec<u8> {
        if p == b"/proc/self/exe" || p == format!("/proc/{}/exe", std::process::id()).as_bytes() {
            return self.proc.exe.as_os_str().as_bytes().to_vec();
        }
        if let (Some(root), Some(b'/')) = (&self.proc.cfg.sysroot, p.first()) {
            let mut full = root.as_os_str().as_bytes().to_vec();
            full.extend_from_slice(p);
            if let Ok(c) = std::ffi::CString::new(full.clone()) {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                // SAFETY: c is a valid C string, st a valid out pointer.
                if unsafe { libc::lstat(c.as_ptr(), st.as_mut_ptr()) } == 0 {
                    return full;
                }
            }
        }
        p.to_vec()
    }
}

/// Host execve with byte-string arguments; returns -errno on failure.
fn host_execve(path: &[u8], argv: &[Vec<u8>], envp: &[Vec<u8>]) -> i64 {
    let to_c = |v: &[u8]| std::ffi::CString::new(v.to_vec()).ok();
    let Some(p) = to_c(path) else {
        return -(libc::ENOENT as i64);
    };
    let a: Option<Vec<_>> = argv.iter().map(|s| to_c(s)).collect();
    let e: Option<Vec<_>> = envp.iter().map(|s| to_c(s)).collect();
    let (Some(a), Some(e)) = (a, e) else {
        return -(libc::EINVAL as i64);
    };
    let mut ap: Vec<*const libc::c_char> = a.iter().map(|c| c.as_ptr()).collect();
    ap.push(std::ptr::null());
    let mut ep: Vec<*const libc::c_char> = e.iter().map(|c| c.as_ptr()).collect();
    ep.push(std::ptr::null());
    // SAFETY: NUL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(p.as_ptr(), ap.as_ptr(), ep.as_ptr()) };
    -(crate::mm::errno() as i64)
}
