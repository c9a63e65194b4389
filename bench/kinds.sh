#!/usr/bin/env bash
# The comparison textbooks make between kinds of virtualization, measured
# on this host with virtkit's engines: start-up time, memory of the
# monitor or runtime, and compute speed relative to native, for
#   native          the workload as a host process (the baseline)
#   container       `virtkit ctr run` of a busybox bundle (namespaces,
#                   cgroups, seccomp; the host's CPU and kernel)
#   KVM VM          `virtkit vm run --arch x86_64` of a small guest that
#                   sets up its page tables in ring 0 and runs the
#                   workload in ring 3 (this host's KVM emulates ring 0)
#   riscv64 VM      `virtkit run` of Debian's riscv64 guest on the
#                   emulator (JIT): restored from its snapshot (the
#                   default) and booted with --cold
#   user-mode emu   `virtkit emu user` of a riscv64 Linux program (as
#                   qemu-riscv64)
# The workload is one C file (built here, no libc): sha256's compression
# function over MIB MiB of a generated (xorshift) message, timed by the
# program itself (clock_gettime; in the KVM guest rdtsc, converted with
# the host's TSC rate measured by the native run), so process and machine
# start-up are not in the compute time. Every kind prints the same digest.
#   start-up   wall time of the whole thing with no work: the program with
#              0 MiB (the riscv64 VM: `virtkit run -- true`)
#   memory     peak RSS (GNU time) and peak PSS (the process tree's sum,
#              sampled every 10 ms) during the compute run: the monitor's
#              or runtime's own memory plus the guest's touched RAM
#   compute    the program's own time for MIB MiB and native's time / it
# Medians of RUNS runs (default 3).
#
# Usage: bench/kinds.sh        (needs root for the container; builds virtkit)
# Env:   RUNS=3  MIB=64  VIRTKIT=/path/to/virtkit
# Needs: gcc, riscv64-linux-gnu-gcc, as/ld, GNU time, python3, /dev/kvm,
# busybox (busybox-static) for the container's rootfs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
MIB=${MIB:-64}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive number" >&2; exit 2; }
[[ $MIB =~ ^[1-9][0-9]*$ ]] || { echo "MIB must be a positive number" >&2; exit 2; }
for tool in gcc riscv64-linux-gnu-gcc ld /usr/bin/time python3 busybox base64; do
  command -v "$tool" >/dev/null || { echo "kinds.sh: $tool is needed (scripts/install-deps.sh)" >&2; exit 2; }
done
[[ -c /dev/kvm ]] || { echo "kinds.sh: /dev/kvm is needed" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "kinds.sh: the container needs root" >&2; exit 2; }

if [[ -z ${VIRTKIT:-} ]]; then
  cargo build --release -q -p virtkit
  VIRTKIT=$PWD/target/release/virtkit
fi
VIRTKIT=$(realpath "$VIRTKIT")
W=$(mktemp -d /tmp/virtkit-kinds.XXXXXX)
cleanup() {
  "$VIRTKIT" ctr --root "$W/state" delete --force kinds-ctr >/dev/null 2>&1 || true
  for c in memory pids cpu cpuacct cpuset blkio freezer devices systemd unified; do
    find "/sys/fs/cgroup/$c/virtkit-bench-kinds" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  rm -rf "$W"
}
trap cleanup EXIT

# ---- the workload -------------------------------------------------------
cat > "$W/work.h" <<'EOF'
/* sha256's compression function over `mib` MiB of a xorshift message. */
typedef unsigned int u32;
typedef unsigned long u64;
static const u32 K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
static void block(u32 h[8], const u32 m[16]) {
    u32 w[64], a, b, c, d, e, f, g, hh;
    int i;
    for (i = 0; i < 16; i++) w[i] = m[i];
    for (i = 16; i < 64; i++) {
        u32 s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        u32 s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
    for (i = 0; i < 64; i++) {
        u32 t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        u32 t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}
static void work(u32 h[8], u64 mib) {
    static const u32 iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                              0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    u32 m[16], x = 2463534242u;
    u64 n;
    int i;
    for (i = 0; i < 8; i++) h[i] = iv[i];
    for (n = 0; n < mib * 16384; n++) {
        for (i = 0; i < 16; i++) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; m[i] = x; }
        block(h, m);
    }
}
/* Formatting into a buffer: no libc. */
static char *put_str(char *p, const char *s) { while (*s) *p++ = *s++; return p; }
static char *put_dec(char *p, u64 v) {
    char t[24]; int n = 0;
    do { t[n++] = '0' + v % 10; v /= 10; } while (v);
    while (n) *p++ = t[--n];
    return p;
}
static char *put_digest(char *p, const u32 h[8]) {
    int i, j;
    for (i = 0; i < 8; i++)
        for (j = 28; j >= 0; j -= 4) *p++ = "0123456789abcdef"[(h[i] >> j) & 15];
    return p;
}
void *memcpy(void *d, const void *s, unsigned long n) {
    char *a = d; const char *b = s;
    while (n--) *a++ = *b++;
    return d;
}
void *memset(void *d, int c, unsigned long n) {
    char *a = d;
    while (n--) *a++ = c;
    return d;
}
EOF

# A Linux program (x86-64 and riscv64): `work MIB` prints the digest and
# the nanoseconds (x86-64: also TSC cycles) the work took.
cat > "$W/linux.c" <<'EOF'
#include "work.h"
struct ts { long s, ns; };
#if defined(__x86_64__)
static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
enum { SYS_WRITE = 1, SYS_EXIT = 60, SYS_CLOCK_GETTIME = 228 };
static u64 cycles(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return (u64)hi << 32 | lo; }
__asm__(".globl _start\n_start:\n xor %rbp, %rbp\n mov %rsp, %rdi\n and $-16, %rsp\n call cmain\n hlt\n");
#elif defined(__riscv)
static long sys3(long n, long a, long b, long c) {
    register long a7 __asm__("a7") = n, a0 __asm__("a0") = a, a1 __asm__("a1") = b, a2 __asm__("a2") = c;
    __asm__ volatile("ecall" : "+r"(a0) : "r"(a7), "r"(a1), "r"(a2) : "memory");
    return a0;
}
enum { SYS_WRITE = 64, SYS_EXIT = 93, SYS_CLOCK_GETTIME = 113 };
static u64 cycles(void) { return 0; }
__asm__(".globl _start\n_start:\n .option push\n .option norelax\n la gp, __global_pointer$\n .option pop\n"
        " mv a0, sp\n andi sp, sp, -16\n call cmain\n");
#endif
static u64 now_ns(void) { struct ts t; sys3(SYS_CLOCK_GETTIME, 1, (long)&t, 0); return t.s * 1000000000ul + t.ns; }
void cmain(long *sp) {
    char **argv = (char **)(sp + 1), buf[160], *p = buf, *a;
    u64 mib = 0, t0, t1, c0, c1;
    u32 h[8];
    if (*sp < 2) { sys3(SYS_WRITE, 2, (long)"usage: work MIB\n", 16); sys3(SYS_EXIT, 2, 0, 0); }
    for (a = argv[1]; *a >= '0' && *a <= '9'; a++) mib = mib * 10 + (*a - '0');
    t0 = now_ns(); c0 = cycles();
    work(h, mib);
    c1 = cycles(); t1 = now_ns();
    p = put_str(p, "digest=");
    p = put_digest(p, h);
    p = put_str(p, " ns=");
    p = put_dec(p, t1 - t0);
    p = put_str(p, " cycles=");
    p = put_dec(p, c1 - c0);
    *p++ = '\n';
    sys3(SYS_WRITE, 1, (long)buf, p - buf);
    sys3(SYS_EXIT, 0, 0, 0);
}
EOF

# The KVM guest: entered in ring 0 in long mode (as Firecracker enters a
# vmlinux), it loads its own GDT and page tables (user-accessible identity
# map of the first GiB) and drops to ring 3 with IOPL 3 at once: on this
# host ring 0 is emulated, ring 3 runs natively. Ring 3 does the work,
# prints on the serial port and resets through the i8042.
cat > "$W/start.s" <<'EOF'
.intel_syntax noprefix
.code64
.text
.globl _start
_start:
    lgdt [rip + gdtr]
    lea rax, [rip + pml4]
    mov cr3, rax
    push 0x1b                 # ss: user data (0x18 | 3)
    lea rax, [rip + ustack_top]
    push rax
    push 0x3002               # rflags: IOPL 3, reserved bit 1
    push 0x23                 # cs: user code (0x20 | 3)
    lea rax, [rip + umain]
    push rax
    iretq
.data
.align 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff  # kernel code
    .quad 0x00cf92000000ffff  # kernel data
    .quad 0x00cff2000000ffff  # user data
    .quad 0x00affa000000ffff  # user code
gdtr:
    .word gdtr - gdt - 1
    .quad gdt
.align 4096
pml4:
    .quad pdpt + 7
    .fill 511, 8, 0
pdpt:
    .quad pd + 7
    .fill 511, 8, 0
pd:
    .set i, 0
    .rept 512
    .quad (i << 21) | 0x87    # 2 MiB page: present, writable, user
    .set i, i + 1
    .endr
.bss
.align 16
    .skip 65536
ustack_top:
.section .note.GNU-stack, "", @progbits
EOF
cat > "$W/bare.c" <<'EOF'
#include "work.h"
static void outb(unsigned short port, unsigned char v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static u64 cycles(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return (u64)hi << 32 | lo; }
void umain(void) {
    char buf[160], *p = buf, *q;
    u32 h[8];
    u64 c0 = cycles(), c1;
    work(h, MIB);
    c1 = cycles();
    p = put_str(p, "digest=");
    p = put_digest(p, h);
    p = put_str(p, " cycles=");
    p = put_dec(p, c1 - c0);
    *p++ = '\n';
    for (q = buf; q < p; q++) outb(0x3f8, *q);
    for (;;) outb(0x64, 0xfe);
}
EOF
cat > "$W/guest.ld" <<'EOF'
ENTRY(_start)
SECTIONS {
  . = 0x200000;
  .text : { *(.text*) }
  .rodata : { *(.rodata*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
}
EOF

CFLAGS=(-O2 -ffreestanding -fno-stack-protector -fno-pie -nostdlib -static -I"$W")
# x86-64: general registers only, in both the native program and the KVM
# guest (the guest's ring 3 has no SSE state set up): the same code runs.
gcc "${CFLAGS[@]}" -no-pie -mgeneral-regs-only -o "$W/work-x86" "$W/linux.c"
riscv64-linux-gnu-gcc "${CFLAGS[@]}" -no-pie -o "$W/work-rv" "$W/linux.c"
as --64 -o "$W/start.o" "$W/start.s"
for n in 0 "$MIB"; do
  gcc "${CFLAGS[@]}" -mgeneral-regs-only -mno-red-zone -mcmodel=small -DMIB="$n" -c -o "$W/bare$n.o" "$W/bare.c"
  ld -static -nostdlib --no-warn-rwx-segments -z max-page-size=4096 -T "$W/guest.ld" \
    -o "$W/guest$n" "$W/start.o" "$W/bare$n.o"
done

# ---- the container bundle -------------------------------------------------
mkdir -p "$W/bundle/rootfs"/{bin,proc,sys,dev,tmp}
cp "$(command -v busybox)" "$W/bundle/rootfs/bin/busybox"
ln -s busybox "$W/bundle/rootfs/bin/sh"
cp "$W/work-x86" "$W/bundle/rootfs/bin/work"
bundle_config() { # args as a JSON list
  cat > "$W/bundle/config.json" <<JSON
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false, "user": {"uid": 0, "gid": 0}, "args": $1,
    "env": ["PATH=/bin"], "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "kinds",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
  ],
  "linux": {
    "cgroupsPath": "/virtkit-bench-kinds/ctr",
    "resources": {"devices": [{"allow": false, "access": "rwm"}], "memory": {"limit": 268435456}, "pids": {"limit": 1024}},
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}
JSON
}
mkdir -p "$W/bundle0" "$W/bundleN"
bundle_config '["/bin/work", "0"]'; mv "$W/bundle/config.json" "$W/bundle0/"
bundle_config "[\"/bin/work\", \"$MIB\"]"; mv "$W/bundle/config.json" "$W/bundleN/"
ln -s ../bundle/rootfs "$W/bundle0/rootfs"
ln -s ../bundle/rootfs "$W/bundleN/rootfs"

# The riscv64 VM gets the program inside its command line (base64): no
# disk, so `virtkit run` can restore its snapshot.
B64=$(base64 -w0 "$W/work-rv")
RVCMD="echo $B64 | base64 -d >/tmp/w && chmod +x /tmp/w && /tmp/w $MIB"
echo "warming up (the riscv64 guest's snapshot is built by its first run) ..." >&2
"$VIRTKIT" run -- true >/dev/null

python3 - "$W" "$VIRTKIT" "$RUNS" "$MIB" "$RVCMD" <<'PY'
import os, re, statistics, subprocess, sys, time
w, vk, runs, mib, rvcmd = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ctr = [vk, "ctr", "--root", f"{w}/state", "run", "--bundle"]
kvm = [vk, "vm", "run", "--arch", "x86_64", "--mem", "64M", "--cpus", "1", "--kernel"]
# name, how, start-up command, compute command
kinds = [
    ("native", "host process", [f"{w}/work-x86", "0"], [f"{w}/work-x86", str(mib)]),
    ("container", "virtkit ctr run", ctr + [f"{w}/bundle0", "kinds-ctr"], ctr + [f"{w}/bundleN", "kinds-ctr"]),
    ("KVM VM", "virtkit vm run --arch x86_64", kvm + [f"{w}/guest0"], kvm + [f"{w}/guest{mib}"]),
    ("riscv64 VM, restored", "virtkit run", [vk, "run", "--", "true"], [vk, "run", "--", "sh", "-c", rvcmd]),
    ("riscv64 VM, cold", "virtkit run --cold", [vk, "run", "--cold", "--", "true"],
     [vk, "run", "--cold", "--", "sh", "-c", rvcmd]),
    ("user-mode emulation", "virtkit emu user", [vk, "emu", "user", f"{w}/work-rv", "0"],
     [vk, "emu", "user", f"{w}/work-rv", str(mib)]),
]

def run(cmd):
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    if p.returncode != 0:
        sys.exit(f"kinds.sh: {' '.join(cmd)[:200]} failed ({p.returncode}):\n{p.stdout[-1000:]}{p.stderr[-1000:]}")
    return p.stdout

def wall(cmd):
    t = time.perf_counter()
    run(cmd)
    return time.perf_counter() - t

def tree(pid):
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out

def measured(cmd):
    """(stdout, peak RSS KiB by GNU time, peak PSS KiB of the tree, sampled)."""
    tf = f"{w}/time"
    p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", tf] + cmd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace")
    out, pss = [], 0
    import threading
    reader = threading.Thread(target=lambda: out.append(p.stdout.read()))
    reader.start()
    while p.poll() is None:
        s = 0
        for q in tree(p.pid)[1:]:  # not time(1) itself
            try:
                with open(f"/proc/{q}/smaps_rollup") as f:
                    s += sum(int(l.split()[1]) for l in f if l.startswith("Pss:"))
            except (OSError, ValueError, IndexError):
                pass
        pss = max(pss, s)
        time.sleep(0.01)
    reader.join()
    if p.returncode != 0:
        sys.exit(f"kinds.sh: {' '.join(cmd)[:200]} failed ({p.returncode}):\n{out[0][-1000:]}")
    with open(tf) as f:
        rss = int(f.read().split()[-1])
    return out[0], rss, pss

med = statistics.median
# Runs go round the kinds (each round runs every kind once), so a change
# in the load of this shared machine touches every kind alike.
for name, how, start, compute in kinds:
    run(start)  # warm caches
st = {k[0]: [] for k in kinds}
secs, rss, pss = ({k[0]: [] for k in kinds} for _ in range(3))
for _ in range(runs):
    for name, how, start, compute in kinds:
        st[name].append(wall(start))
digest, tsc_per_ns = None, None
for _ in range(runs):
    for name, how, start, compute in kinds:
        out, r, p = measured(compute)
        m = re.search(r"digest=([0-9a-f]{64})(?: ns=(\d+))? cycles=(\d+)", out)
        if not m:
            sys.exit(f"kinds.sh: {name}: no result in its output:\n{out[-1000:]}")
        if digest is None:
            digest = m[1]
        elif m[1] != digest:
            sys.exit(f"kinds.sh: {name} computed {m[1]}, native {digest}")
        if m[2] is not None:
            ns = int(m[2])
            if name == "native" and tsc_per_ns is None:
                tsc_per_ns = int(m[3]) / ns
        else:  # the KVM guest: TSC cycles only
            ns = int(m[3]) / tsc_per_ns
        secs[name].append(ns / 1e9)
        rss[name].append(r)
        pss[name].append(p)
rows = [(k[0], k[1], med(st[k[0]]), med(rss[k[0]]) / 1024, med(pss[k[0]]) / 1024, med(secs[k[0]]))
        for k in kinds]

native = rows[0][5]
print(f"\n| kind | run by | start-up (ms) | peak RSS (MB) | peak PSS (MB) | compute {mib} MiB (s) | speed vs native |")
print("|---|---|---|---|---|---|---|")
for name, how, st, rss, pss, secs in rows:
    print(f"| {name} | `{how}` | {st * 1000:.1f} | {rss:.2f} | {pss:.2f} | {secs:.3f} | {native / secs:.2f}x |")
speed = {r[0]: native / r[5] for r in rows}
start = {r[0]: r[2] for r in rows}
emu = sorted([speed["riscv64 VM, restored"], speed["riscv64 VM, cold"], speed["user-mode emulation"]])
print(f"""
(medians of {runs} runs on a 2-core machine shared with other jobs; workload: sha256 compression over
 {mib} MiB of a generated message, timed by the program itself; start-up: the same with no work (riscv64 VM:
 `run -- true`); memory: during the compute run, the monitor or runtime plus the guest RAM it touched.)
On this host /dev/kvm is itself nested and emulates guest ring 0 (about a million instructions/s) while
guest ring 3 runs natively: the KVM guest computes at {speed["KVM VM"]:.2f}x native only because it computes in
ring 3, and it starts in {start["KVM VM"] * 1000:.0f} ms only because it runs a few dozen ring-0 instructions; a Linux
kernel runs in ring 0 and would take hours to boot, so Linux VMs here are the emulated riscv64 ones
({emu[0]:.2f}x to {emu[-1]:.2f}x native at compute, {start["riscv64 VM, cold"]:.1f} s to boot cold, {start["riscv64 VM, restored"] * 1000:.0f} ms from a snapshot).
On hardware virtualization (VT-x/AMD-V) ring 0 runs natively too: a KVM VM boots Linux in about
125 ms (Firecracker's figure) and computes at close to native speed, the textbook picture; the
container shares the host kernel (native speed, a runtime's memory, {start["container"] * 1000:.0f} ms here) and
emulation stays several times slower than native at compute on any host.""")
PY
