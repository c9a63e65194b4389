#!/usr/bin/env bash
# A real Linux boot under virtkit's KVM monitor and under Firecracker, in
# the nested setup of tests/kvm_nested.rs: this host's /dev/kvm emulates
# guest ring 0, so Linux does not boot on it; QEMU's TCG with `-cpu max`
# emulates AMD SVM with nested paging, and Debian's amd64 kernel inside it
# ("L1") loads kvm_amd and offers a working /dev/kvm. In one outer QEMU
# run, L1 boots the same guest ("L2": Debian's amd64 kernel, 1 vCPU,
# 256 MiB, a busybox initramfs whose init prints its uptime and reboots
# through the i8042) RUNS times under each monitor, alternating:
#   virtkit          `virtkit vm run --arch x86_64` with the kernel's bzImage
#   virtkit-vmlinux  the same with Firecracker's vmlinux (the same kernel,
#                    without the bzImage's decompressor running in L2)
#   firecracker      `firecracker --no-api --config-file` with its vmlinux
#                    (uncompressed here from the bzImage's payload:
#                    Firecracker loads ELF kernels only on x86-64)
#   *-tiny           bench/kvm.sh's tiny guest (a serial line, then the
#                    i8042 reset) under each monitor: the monitor's own
#                    start and exit cost in L1, without a kernel to boot
# and reports, per monitor, the L2 kernel's uptime when its init runs
# (boot to userspace, in guest time), the monitor's wall time from start
# to exit and its peak RSS, both measured in L1 by busybox `time`.
# Everything runs under TCG, so the absolute times are those of an
# emulated machine (tens of times slower than hardware); the ratio is the
# useful part. Single runs are noisy (the outer QEMU's threads share the
# host's cores with whatever else runs there), hence the alternating runs
# and medians.
#
# L1 runs with transparent huge pages off, for both monitors alike. With
# Debian's default (THP "always"), most vmlinux boots (7 of 8 in one
# sample, under either monitor) stalled for 0.3 to 2 s of guest time in the
# L2 kernel's IPv6 set-up, and no bzImage boot did. Traced in L2
# (initcall_debug, sched events, function_graph): the time goes to the
# first dynamic per-CPU chunk the kernel creates (pcpu_create_chunk, from
# whichever of inet6_init's allocations comes first), inside
# alloc_pages_bulk zeroing fresh pages for its maps: one call took 300 to
# 650 ms where it takes 1 to 20 ms otherwise, with nothing else running in
# L2 and no compaction in L1. As only L1's setting changes it, that is
# time spent outside L2 (by L1 and the outer emulator) when L2 first
# touches RAM that L1 backs with 2 MiB pages: a vmlinux boot has L1 fault
# in 48 of them, a bzImage boot 66, whose decompressor touches much of its
# memory before the kernel's clock starts (likely why no bzImage boot
# showed the stall). With THP off in L1, 0 of 8 vmlinux boots stalled,
# and the boots' other phases took the same time under both monitors:
# per-initcall times (initcall_debug) and the times of the boot's
# milestones match between virtkit and Firecracker on the same vmlinux.
# The two monitors also make the same number of KVM exits per boot (about
# 3,500: ~200 port I/O, ~40 nested page faults), and their guests' boots
# differ in small ways only (Firecracker's has a CMOS RTC; both offer the
# TSC-deadline timer, which spares Linux a 100 ms calibration of the
# LAPIC timer). Both have the same devices: `vm run --arch x86_64` always
# adds a virtio-rng, so Firecracker gets its entropy device, as in
# bench/kvm.sh (L2's initramfs loads no driver for either).
# Measured so, with the same devices (16 alternating runs, loaded host):
# the same vmlinux reaches init after 4.04 s of guest time under virtkit
# and 4.57 s under Firecracker (0.89x), in 8.16 and 8.32 s of monitor
# wall time (0.98x), 77 MB peak RSS each (1.00x). Over 60 runs in five
# outer runs (the first 44 without Firecracker's entropy device): 0.96x,
# 0.98x, 1.00x, every outer run's medians at or under 1x; run by run
# (each virtkit boot against the Firecracker boot next to it) a coin toss:
# virtkit's uptime was the lower in 29 of 60 pairs, its wall time in 36.
#
# Firecracker is not part of virtkit and is never committed: build it from
# its public source as bench/kvm.sh says and give its path in FIRECRACKER
# (without it, only virtkit is measured).
#
# Usage: bench/kvm-nested.sh [RUNS]   (default 5; builds virtkit --release)
# Env:   FIRECRACKER=/path/to/firecracker  VIRTKIT=/path/to/virtkit
#        KEEP=1 (keep the work directory and print its path)
# Needs: qemu-system-x86_64 (qemu-system-x86), python3, ldd, objcopy, and
# the amd64 guest assets (`virtkit guest fetch --arch amd64`, run here).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive number" >&2; exit 2; }
for tool in qemu-system-x86_64 python3 ldd objcopy zstd xz as ld; do
  command -v "$tool" >/dev/null || { echo "kvm-nested.sh: $tool is needed (scripts/install-deps.sh)" >&2; exit 2; }
done
if [[ -n ${FIRECRACKER:-} && ! -x $FIRECRACKER ]]; then
  echo "kvm-nested.sh: FIRECRACKER=$FIRECRACKER is not executable" >&2; exit 2
fi

if [[ -z ${VIRTKIT:-} ]]; then
  cargo build --release -q -p virtkit
  VIRTKIT=$PWD/target/release/virtkit
fi
W=$(mktemp -d /tmp/virtkit-kvm-nested.XXXXXX)
if [[ ${KEEP:-0} == 1 ]]; then echo "work directory: $W" >&2; else trap 'rm -rf "$W"' EXIT; fi

# Debian's amd64 kernel (a bzImage), its modules (unpacked by the guest
# crate next to the kernel package) and static busybox.
KERNEL=$("$VIRTKIT" guest path kernel --arch amd64 -q)
BUSYBOX=$("$VIRTKIT" guest path busybox --arch amd64 -q)
RELEASE=$(awk '$1 == "release" { print $2 }' "$(dirname "$KERNEL")/manifest")
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/virtkit
MODDIR=$(ls -d "$CACHE"/debian/unpacked/*/usr/lib/modules/"$RELEASE"/kernel 2>/dev/null | head -1)
[[ -n $MODDIR ]] || { echo "kvm-nested.sh: the modules of $RELEASE are not in $CACHE/debian/unpacked" >&2; exit 1; }
objcopy --strip-debug "$VIRTKIT" "$W/virtkit"

APPEND="console=ttyS0 reboot=k panic=-1 pci=off quiet loglevel=2"

# bench/kvm.sh's tiny guest, bench/tiny-kvm-guest.s (a line on the serial
# port, then the i8042 reset): what each monitor costs without a kernel to boot.
as --64 -o "$W/hello.o" bench/tiny-kvm-guest.s
ld -static -nostdlib -Ttext=0x200000 -o "$W/hello" "$W/hello.o"
# An idle guest (halted with interrupts off) that L1 keeps running for the
# whole benchmark, under virtkit (see the L1 init below).
printf '.globl _start\n_start: cli\n1: hlt\n jmp 1b\n.section .note.GNU-stack,"",@progbits\n' >"$W/idle.s"
as --64 -o "$W/idle.o" "$W/idle.s"
ld -static -nostdlib -Ttext=0x200000 -o "$W/idle" "$W/idle.o"

# L1's /init: load KVM, then boot L2 RUNS times under each monitor.
cat > "$W/init" <<EOF
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /root
while read -r m; do
	insmod "/kvm/\$m.ko" || echo "L1-ERROR insmod \$m"
done </kvm/order
[ -c /dev/kvm ] || echo "L1-ERROR no /dev/kvm"
# No transparent huge pages for the monitors' guest RAM in L1 (see the
# header: with them, most vmlinux boots stall 0.3-2 s under either monitor).
echo never >/sys/kernel/mm/transparent_hugepage/enabled || echo "L1-ERROR THP setting"
# One VM lives through all the runs: KVM flips kernel static keys (the
# scheduler's preempt notifiers among them) when the first VM comes and
# the last goes, and the outer QEMU sometimes runs L1's other CPU into the
# half-patched code (an "Oops: int3" in __schedule ends the outer run).
/bin/virtkit vm run --arch x86_64 --kernel /guest/idle --mem 4M --cpus 1 </dev/null >/dev/null 2>&1 &
sleep 2
cat >/tmp/fc.json <<JSON
{
  "boot-source": { "kernel_image_path": "/guest/vmlinux", "initrd_path": "/guest/l2.cpio", "boot_args": "$APPEND" },
  "drives": [],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": 256 },
  "entropy": {}
}
JSON
cat >/tmp/fc-tiny.json <<JSON
{
  "boot-source": { "kernel_image_path": "/guest/hello", "boot_args": "console=ttyS0" },
  "drives": [],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": 256 },
  "entropy": {}
}
JSON
one() { # name command...
	name=\$1; shift
	time -f "L1-TIME %e %M %x" -o /tmp/time "\$@" </dev/null >/tmp/out 2>&1
	up=\$(sed -n 's/.*L2-UPTIME \([0-9.]*\).*/\1/p' /tmp/out | head -1)
	# The tiny guest has no uptime: its line is the proof it ran.
	grep -q "hello from a tiny KVM guest" /tmp/out && up=0
	set -- \$(cat /tmp/time | grep L1-TIME)
	echo "L1-RESULT \$name \${up:-none} \$2 \$3 \$4"
	[ -n "\$up" ] || { echo "L1-OUTPUT of \$name:"; tail -20 /tmp/out; }
}
i=0
while [ \$i -lt $RUNS ]; do
	one virtkit /bin/virtkit vm run --arch x86_64 --kernel /guest/bzImage --initrd /guest/l2.cpio \
		--append "$APPEND" --mem 256M --cpus 1
	one virtkit-vmlinux /bin/virtkit vm run --arch x86_64 --kernel /guest/vmlinux --initrd /guest/l2.cpio \
		--append "$APPEND" --mem 256M --cpus 1
	[ -x /bin/firecracker ] && one firecracker /bin/firecracker --no-api --config-file /tmp/fc.json --level Error
	one virtkit-tiny /bin/virtkit vm run --arch x86_64 --kernel /guest/hello --mem 256M --cpus 1
	[ -x /bin/firecracker ] && one firecracker-tiny /bin/firecracker --no-api --config-file /tmp/fc-tiny.json --level Error
	i=\$((i + 1))
done
poweroff -f
EOF

# L2's /init: its uptime, then a reset through the i8042 (reboot=k).
cat > "$W/l2init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
read -r up idle </proc/uptime
echo "L2-UPTIME $up"
/bin/busybox reboot -f
EOF

python3 - "$W" "$KERNEL" "$BUSYBOX" "$MODDIR" "${FIRECRACKER:-}" <<'PY'
import lzma, os, subprocess, sys
w, kernel, busybox, moddir, fc = sys.argv[1:6]

class Cpio:
    """newc archive writer (what the kernel unpacks as an initramfs)."""
    def __init__(self):
        self.out, self.ino, self.dirs = bytearray(), 1, set()
    def entry(self, name, mode, data=b"", rdev=(0, 0)):
        self.ino += 1
        name = name.encode() + b"\0"
        hdr = "070701" + "".join("%08x" % v for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name), 0))
        self.out += hdr.encode() + name
        self.out += b"\0" * (-len(self.out) % 4) + data
        self.out += b"\0" * (-len(self.out) % 4)
    def dir(self, name):
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self.entry(d, 0o040755)
    def file(self, name, data, mode=0o755):
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self.entry(name, 0o100000 | mode, data)
    def finish(self):
        self.entry("TRAILER!!!", 0)
        return bytes(self.out)

def read(p):
    with open(p, "rb") as f:
        return f.read()

# The uncompressed kernel for Firecracker: the first xz or zstd stream in
# the bzImage that decompresses to an ELF file (Debian's trixie kernels
# are zstd, bookworm's xz). zstd(1) complains about the bytes after the
# stream but writes the stream out.
bz = read(kernel)
vmlinux = None
for magic, unpack in ((b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]), (b"\xfd7zXZ\x00", ["xz", "-dcq"])):
    at = bz.find(magic)
    while vmlinux is None and at >= 0:
        d = subprocess.run(unpack, input=bz[at:], capture_output=True).stdout
        if d[:4] == b"\x7fELF":
            vmlinux = d
        at = bz.find(magic, at + 1)
if vmlinux is None:
    sys.exit("kvm-nested.sh: no xz or zstd-compressed ELF kernel inside " + kernel)

# kvm_amd and the modules it depends on (from their .modinfo), in order.
paths = {}
for root, _, files in os.walk(moddir):
    for f in files:
        if f.endswith(".ko.xz"):
            paths[f[:-6].replace("-", "_")] = os.path.join(root, f)
order, mods = [], {}
def load(name):
    if name in mods:
        return
    data = lzma.decompress(read(paths[name]))
    mods[name] = data
    at = data.find(b"depends=")
    deps = data[at + 8:data.index(b"\0", at)].decode() if at >= 0 else ""
    for dep in filter(None, deps.split(",")):
        load(dep.replace("-", "_"))
    order.append(name)
load("kvm_amd")

l2 = Cpio()
for d in ("bin", "dev", "proc"):
    l2.dir(d)
l2.entry("dev/console", 0o020600, rdev=(5, 1))
l2.file("bin/busybox", read(busybox))
l2.file("init", read(os.path.join(w, "l2init")))
l2 = l2.finish()

def libs(exe):
    out = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        p = line.split("=>")[-1].split()
        if p and p[0].startswith("/"):
            yield p[0]

l1 = Cpio()
for d in ("bin", "dev", "proc", "sys", "tmp", "root", "kvm", "guest"):
    l1.dir(d)
l1.entry("dev/console", 0o020600, rdev=(5, 1))
l1.file("bin/busybox", read(busybox))
l1.entry("bin/sh", 0o120777, b"busybox")
exes = [os.path.join(w, "virtkit")] + ([fc] if fc else [])
for exe, name in zip(exes, ["virtkit", "firecracker"]):
    l1.file("bin/" + name, read(exe))
    for lib in libs(exe):
        l1.file(lib.lstrip("/"), read(lib))
for name in order:
    l1.file(f"kvm/{name}.ko", mods[name], 0o644)
l1.file("kvm/order", ("\n".join(order) + "\n").encode(), 0o644)
l1.file("guest/bzImage", bz, 0o644)
l1.file("guest/vmlinux", vmlinux, 0o644)
l1.file("guest/l2.cpio", l2, 0o644)
l1.file("guest/hello", read(os.path.join(w, "hello")), 0o644)
l1.file("guest/idle", read(os.path.join(w, "idle")), 0o644)
l1.file("init", read(os.path.join(w, "init")))
with open(os.path.join(w, "l1.cpio"), "wb") as f:
    f.write(l1.finish())
PY

echo "booting the outer QEMU (TCG, -cpu max) with $RUNS run(s) per monitor ..." >&2
start=$(date +%s.%N)
timeout 1800 qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2G -nographic -no-reboot -nodefaults \
  -serial stdio -kernel "$KERNEL" -initrd "$W/l1.cpio" -append "console=ttyS0 panic=-1 quiet" \
  </dev/null > "$W/console" 2>&1 || { echo "outer QEMU failed:" >&2; tail -40 "$W/console" >&2; exit 1; }
end=$(date +%s.%N)
tr -d '\r' < "$W/console" > "$W/console.txt"
if grep -q "L1-ERROR\|L1-OUTPUT" "$W/console.txt"; then
  echo "kvm-nested.sh: something failed in L1:" >&2
  grep -A20 "L1-ERROR\|L1-OUTPUT" "$W/console.txt" >&2
  exit 1
fi

python3 - "$W/console.txt" "$RUNS" "$(echo "$end - $start" | bc)" <<'PY'
import statistics, sys
console, runs, outer = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
res = {}
for line in open(console):
    p = line.split()
    if len(p) == 6 and p[0] == "L1-RESULT":
        _, name, up, wall, rss, status = p
        res.setdefault(name, []).append((float(up), float(wall), int(rss), int(status)))
if "virtkit" not in res:
    sys.exit("kvm-nested.sh: no results in the outer console:\n" + open(console).read()[-3000:])
short = {n: len(r) for n, r in res.items() if len(r) < runs}
if short:
    print(f"kvm-nested.sh: the outer run ended early (results per monitor: {short} of {runs}); its console's end:\n"
          + "".join(open(console).readlines()[-25:]), file=sys.stderr)
med = lambda xs: statistics.median(xs)
print(f"\n| monitor (in L1, median of {min(len(r) for r in res.values())}+ runs) | L2 uptime at init (s) | wall time (s) | peak RSS (MB) | exit status |")
print("|---|---|---|---|---|")
rows = {}
for name in ("virtkit", "virtkit-vmlinux", "firecracker", "virtkit-tiny", "firecracker-tiny"):
    if name not in res:
        continue
    r = res[name]
    up, wall, rss = med([x[0] for x in r]), med([x[1] for x in r]), med([x[2] for x in r]) / 1024
    rows[name] = (up, wall, rss)
    allup = " ".join(f"{x[0]:.2f}" for x in r)
    allwall = " ".join(f"{x[1]:.2f}" for x in r)
    st = ",".join(sorted({str(x[3]) for x in r}))
    if name.endswith("-tiny"):
        rows[name] = (None, wall, rss)
        print(f"| {name} (no Linux) | - | {wall:.2f} ({allwall}) | {rss:.1f} | {st} |")
    else:
        print(f"| {name} | {up:.2f} ({allup}) | {wall:.2f} ({allwall}) | {rss:.1f} | {st} |")
for name, peer in (("virtkit", "firecracker"), ("virtkit-vmlinux", "firecracker"),
                   ("virtkit-tiny", "firecracker-tiny")):
    if name in rows and peer in rows:
        v, f = rows[name], rows[peer]
        up = "-" if v[0] is None else f"{v[0]/f[0]:.2f}"
        print(f"| ratio {name}/{peer} | {up} | {v[1]/f[1]:.2f} | {v[2]/f[2]:.2f} | |")
print(f"\n(one outer QEMU run of {outer:.0f} s; L2 is Debian's amd64 kernel with a busybox initramfs,"
      "\n 1 vCPU, 256 MiB; every number is from a machine emulated by QEMU's TCG, so only ratios carry over"
      "\n to hardware virtualization. The L2 uptime is the guest's own clock, which keeps L1's pace but"
      "\n starts with the kernel: the wall time adds the monitor's start (the kernel's loading), what runs"
      "\n before the kernel's clock (a bzImage's decompressor), the reset and the exit. Compare uptimes"
      "\n with uptimes, wall times with wall times.)")
PY
