//! riscv64 Linux ABI constants and the structure layouts that differ from
//! the x86-64 host's.
//!
//! Most of the generic syscall ABI is shared by both 64-bit architectures
//! (errno values, open/mmap flags, signal numbers, timespec, iovec,
//! dirent64, statx, termios, siginfo); the differences handled here are
//! `struct stat` (x86-64 has its own, riscv64 the generic one), `struct
//! sigaction` (no `sa_restorer` on riscv64), `struct epoll_event` (packed
//! on x86-64 only) and the signal frame.

/// riscv64 (asm-generic) syscall numbers used by the dispatcher.
#[allow(missing_docs)]
pub mod nr {
    pub const GETCWD: u64 = 17;
    pub const EVENTFD2: u64 = 19;
    pub const EPOLL_CREATE1: u64 = 20;
    pub const EPOLL_CTL: u64 = 21;
    pub const EPOLL_PWAIT: u64 = 22;
    pub const DUP: u64 = 23;
    pub const DUP3: u64 = 24;
    pub const FCNTL: u64 = 25;
    pub const INOTIFY_INIT1: u64 = 26;
    pub const INOTIFY_ADD_WATCH: u64 = 27;
    pub const INOTIFY_RM_WATCH: u64 = 28;
    pub const IOCTL: u64 = 29;
    pub const FLOCK: u64 = 32;
    pub const MKNODAT: u64 = 33;
    pub const MKDIRAT: u64 = 34;
    pub const UNLINKAT: u64 = 35;
    pub const SYMLINKAT: u64 = 36;
    pub const LINKAT: u64 = 37;
    pub const STATFS: u64 = 43;
    pub const FSTATFS: u64 = 44;
    pub const TRUNCATE: u64 = 45;
    pub const FTRUNCATE: u64 = 46;
    pub const FALLOCATE: u64 = 47;
    pub const FACCESSAT: u64 = 48;
    pub const CHDIR: u64 = 49;
    pub const FCHDIR: u64 = 50;
    pub const CHROOT: u64 = 51;
    pub const FCHMOD: u64 = 52;
    pub const FCHMODAT: u64 = 53;
    pub const FCHOWNAT: u64 = 54;
    pub const FCHOWN: u64 = 55;
    pub const OPENAT: u64 = 56;
    pub const CLOSE: u64 = 57;
    pub const PIPE2: u64 = 59;
    pub const GETDENTS64: u64 = 61;
    pub const LSEEK: u64 = 62;
    pub const READ: u64 = 63;
    pub const WRITE: u64 = 64;
    pub const READV: u64 = 65;
    pub const WRITEV: u64 = 66;
    pub const PREAD64: u64 = 67;
    pub const PWRITE64: u64 = 68;
    pub const PREADV: u64 = 69;
    pub const PWRITEV: u64 = 70;
    pub const SENDFILE: u64 = 71;
    pub const PSELECT6: u64 = 72;
    pub const PPOLL: u64 = 73;
    pub const SIGNALFD4: u64 = 74;
    pub const SPLICE: u64 = 76;
    pub const READLINKAT: u64 = 78;
    pub const NEWFSTATAT: u64 = 79;
    pub const FSTAT: u64 = 80;
    pub const SYNC: u64 = 81;
    pub const FSYNC: u64 = 82;
    pub const FDATASYNC: u64 = 83;
    pub const TIMERFD_CREATE: u64 = 85;
    pub const TIMERFD_SETTIME: u64 = 86;
    pub const TIMERFD_GETTIME: u64 = 87;
    pub const UTIMENSAT: u64 = 88;
    pub const CAPGET: u64 = 90;
    pub const PERSONALITY: u64 = 92;
    pub const EXIT: u64 = 93;
    pub const EXIT_GROUP: u64 = 94;
    pub const WAITID: u64 = 95;
    pub const SET_TID_ADDRESS: u64 = 96;
    pub const FUTEX: u64 = 98;
    pub const SET_ROBUST_LIST: u64 = 99;
    pub const GET_ROBUST_LIST: u64 = 100;
    pub const NANOSLEEP: u64 = 101;
    pub const GETITIMER: u64 = 102;
    pub const SETITIMER: u64 = 103;
    pub const CLOCK_GETTIME: u64 = 113;
    pub const CLOCK_GETRES: u64 = 114;
    pub const CLOCK_NANOSLEEP: u64 = 115;
    pub const SCHED_SETAFFINITY: u64 = 122;
    pub const SCHED_GETAFFINITY: u64 = 123;
    pub const SCHED_YIELD: u64 = 124;
    pub const KILL: u64 = 129;
    pub const TKILL: u64 = 130;
    pub const TGKILL: u64 = 131;
    pub const SIGALTSTACK: u64 = 132;
    pub const RT_SIGSUSPEND: u64 = 133;
    pub const RT_SIGACTION: u64 = 134;
    pub const RT_SIGPROCMASK: u64 = 135;
    pub const RT_SIGPENDING: u64 = 136;
    pub const RT_SIGTIMEDWAIT: u64 = 137;
    pub const RT_SIGQUEUEINFO: u64 = 138;
    pub const RT_SIGRETURN: u64 = 139;
    pub const SETPRIORITY: u64 = 140;
    pub const GETPRIORITY: u64 = 141;
    pub const SETREGID: u64 = 143;
    pub const SETGID: u64 = 144;
    pub const SETREUID: u64 = 145;
    pub const SETUID: u64 = 146;
    pub const SETRESUID: u64 = 147;
    pub const GETRESUID: u64 = 148;
    pub const SETRESGID: u64 = 149;
    pub const GETRESGID: u64 = 150;
    pub const TIMES: u64 = 153;
    pub const SETPGID: u64 = 154;
    pub const GETPGID: u64 = 155;
    pub const GETSID: u64 = 156;
    pub const SETSID: u64 = 157;
    pub const GETGROUPS: u64 = 158;
    pub const SETGROUPS: u64 = 159;
    pub const UNAME: u64 = 160;
    pub const SETHOSTNAME: u64 = 161;
    pub const GETRLIMIT: u64 = 163;
    pub const SETRLIMIT: u64 = 164;
    pub const GETRUSAGE: u64 = 165;
    pub const UMASK: u64 = 166;
    pub const PRCTL: u64 = 167;
    pub const GETCPU: u64 = 168;
    pub const GETTIMEOFDAY: u64 = 169;
    pub const GETPID: u64 = 172;
    pub const GETPPID: u64 = 173;
    pub const GETUID: u64 = 174;
    pub const GETEUID: u64 = 175;
    pub const GETGID: u64 = 176;
    pub const GETEGID: u64 = 177;
    pub const GETTID: u64 = 178;
    pub const SYSINFO: u64 = 179;
    pub const SOCKET: u64 = 198;
    pub const SOCKETPAIR: u64 = 199;
    pub const BIND: u64 = 200;
    pub const LISTEN: u64 = 201;
    pub const ACCEPT: u64 = 202;
    pub const CONNECT: u64 = 203;
    pub const GETSOCKNAME: u64 = 204;
    pub const GETPEERNAME: u64 = 205;
    pub const SENDTO: u64 = 206;
    pub const RECVFROM: u64 = 207;
    pub const SETSOCKOPT: u64 = 208;
    pub const GETSOCKOPT: u64 = 209;
    pub const SHUTDOWN: u64 = 210;
    pub const SENDMSG: u64 = 211;
    pub const RECVMSG: u64 = 212;
    pub const BRK: u64 = 214;
    pub const MUNMAP: u64 = 215;
    pub const MREMAP: u64 = 216;
    pub const CLONE: u64 = 220;
    pub const EXECVE: u64 = 221;
    pub const MMAP: u64 = 222;
    pub const FADVISE64: u64 = 223;
    pub const MPROTECT: u64 = 226;
    pub const MSYNC: u64 = 227;
    pub const MLOCK: u64 = 228;
    pub const MUNLOCK: u64 = 229;
    pub const MLOCKALL: u64 = 230;
    pub const MUNLOCKALL: u64 = 231;
    pub const MINCORE: u64 = 232;
    pub const MADVISE: u64 = 233;
    pub const ACCEPT4: u64 = 242;
    pub const RISCV_HWPROBE: u64 = 258;
    pub const RISCV_FLUSH_ICACHE: u64 = 259;
    pub const WAIT4: u64 = 260;
    pub const PRLIMIT64: u64 = 261;
    pub const RENAMEAT2: u64 = 276;
    pub const GETRANDOM: u64 = 278;
    pub const MEMFD_CREATE: u64 = 279;
    pub const EXECVEAT: u64 = 281;
    pub const MEMBARRIER: u64 = 283;
    pub const COPY_FILE_RANGE: u64 = 285;
    pub const STATX: u64 = 291;
    pub const RSEQ: u64 = 293;
    pub const CLONE3: u64 = 435;
    pub const CLOSE_RANGE: u64 = 436;
    pub const FACCESSAT2: u64 = 439;
}

/// Size of the riscv64 `struct stat`.
pub const STAT_SIZE: usize = 128;

/// Converts a host `struct stat` to the riscv64 (asm-generic) layout.
pub fn stat_to_guest(st: &libc::stat) -> [u8; STAT_SIZE] {
    let mut b = [0u8; STAT_SIZE];
    let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(0, &st.st_dev.to_le_bytes());
    put(8, &st.st_ino.to_le_bytes());
    put(16, &st.st_mode.to_le_bytes());
    put(20, &(st.st_nlink as u32).to_le_bytes());
    put(24, &st.st_uid.to_le_bytes());
    put(28, &st.st_gid.to_le_bytes());
    put(32, &st.st_rdev.to_le_bytes());
    put(48, &st.st_size.to_le_bytes());
    put(56, &(st.st_blksize as i32).to_le_bytes());
    put(64, &st.st_blocks.to_le_bytes());
    put(72, &st.st_atime.to_le_bytes());
    put(80, &st.st_atime_nsec.to_le_bytes());
    put(88, &st.st_mtime.to_le_bytes());
    put(96, &st.st_mtime_nsec.to_le_bytes());
    put(104, &st.st_ctime.to_le_bytes());
    put(112, &st.st_ctime_nsec.to_le_bytes());
    b
}

/// `sa_flags` bits of the riscv64 (generic) ABI.
pub const SA_SIGINFO: u64 = 4;
/// Deliver on the alternate stack.
pub const SA_ONSTACK: u64 = 0x0800_0000;
/// Restart interrupted syscalls.
pub const SA_RESTART: u64 = 0x1000_0000;
/// Do not block the signal in its handler.
pub const SA_NODEFER: u64 = 0x4000_0000;
/// Reset to SIG_DFL on delivery.
pub const SA_RESETHAND: u64 = 0x8000_0000;

/// `struct ucontext` offsets on riscv64 (arch/riscv/include/uapi/asm/ucontext.h).
pub mod uc {
    /// uc_flags(8) uc_link(8) uc_stack(24) uc_sigmask(8) __unused(120).
    pub const STACK: u64 = 16;
    /// The saved signal mask.
    pub const SIGMASK: u64 = 40;
    /// `struct sigcontext`: 176 (= 168 rounded up to its 16-byte alignment).
    pub const MCONTEXT: u64 = 176;
    /// `sc_regs`: pc, then x1..x31.
    pub const REGS: u64 = MCONTEXT;
    /// `sc_fpregs`: f0..f31 then fcsr (the D layout of the FP union).
    pub const FPREGS: u64 = MCONTEXT + 32 * 8;
    /// sigcontext = 256 bytes of regs + 528 of the FP union (its Q size).
    pub const SIZE: u64 = MCONTEXT + 256 + 528;
}

/// `struct rt_sigframe` = siginfo (128) + ucontext, 16-byte aligned.
pub const SIGFRAME_SIZE: u64 = (128 + uc::SIZE + 15) & !15;
