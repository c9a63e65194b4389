#!/usr/bin/env bash
# virtkit's KVM monitor against Firecracker on a tiny guest: process start,
# a guest that prints one line on the serial port and resets through the
# i8042, process exit. Wall time and peak RSS of each run, the monitors
# alternating run by run.
#
# The guest (bench/tiny-kvm-guest.s) is a few instructions of 64-bit code
# in an ELF file at physical 2 MiB (built here with GNU as and ld), entered
# in long mode by both monitors, 1 vCPU, 64 MiB of RAM, and the same
# devices: `vm run --arch x86_64` always adds a virtio-rng, so Firecracker
# gets its entropy device. (Without it Firecracker registers no ioeventfd
# or irqfd, and its VM's teardown waits for no SRCU grace period: about
# 4 ms less on this host.)
#
# Firecracker is not part of virtkit and is never committed: build it from
# its public source and give its path in FIRECRACKER (without it, only
# virtkit is measured):
#   git clone https://github.com/firecracker-microvm/firecracker
#   git clone https://github.com/firecracker-microvm/micro-http
#   cd firecracker && rm rust-toolchain.toml   # use the local stable toolchain
#   printf '\n[patch."https://github.com/firecracker-microvm/micro-http"]\nmicro_http = { path = "../micro-http" }\n' >> Cargo.toml
#   apt-get install libclang-dev libseccomp-dev
#   cargo build --release -p firecracker
#   FIRECRACKER=$PWD/target/release/firecracker bench/kvm.sh
# (recent trees put the binary in target/release/; older ones in
# build/cargo_target/release/.)
#
# Usage: bench/kvm.sh [RUNS]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive number" >&2; exit 2; }
for tool in as ld python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "kvm.sh: $tool is needed (scripts/install-deps.sh)" >&2; exit 2; }
done
[[ -c /dev/kvm ]] || { echo "kvm.sh: /dev/kvm is needed" >&2; exit 2; }

cargo build --release -q -p virtkit
VIRTKIT=$PWD/target/release/virtkit
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

as --64 -o "$work/hello.o" bench/tiny-kvm-guest.s
ld -static -nostdlib -Ttext=0x200000 -o "$work/hello" "$work/hello.o"

vk=("$VIRTKIT" vm run --arch x86_64 --kernel "$work/hello" --mem 64M --cpus 1)
"${vk[@]}" </dev/null 2>/dev/null | grep -q "hello from a tiny KVM guest" \
  || { echo "kvm.sh: virtkit did not run the guest" >&2; exit 1; }

# One line per monitor: its name and argv, tab-separated.
(IFS=$'\t'; echo "virtkit${IFS}${vk[*]}") > "$work/cmds"
if [[ -n ${FIRECRACKER:-} ]]; then
  [[ -x $FIRECRACKER ]] || { echo "kvm.sh: FIRECRACKER=$FIRECRACKER is not executable" >&2; exit 2; }
  cat > "$work/fc.json" <<EOF
{
  "boot-source": { "kernel_image_path": "$work/hello", "boot_args": "console=ttyS0" },
  "drives": [],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 },
  "entropy": {}
}
EOF
  fc=("$FIRECRACKER" --no-api --config-file "$work/fc.json" --level Error)
  "${fc[@]}" </dev/null 2>/dev/null | grep -q "hello from a tiny KVM guest" \
    || { echo "kvm.sh: Firecracker did not run the guest" >&2; exit 1; }
  (IFS=$'\t'; echo "firecracker${IFS}${fc[*]}") >> "$work/cmds"
fi

# The two monitors run alternately, run by run, so that a change of load
# on this shared machine weighs on both alike (hyperfine runs one command's
# series after the other's). Each run is timed from fork to exit and its
# peak RSS read from wait4's rusage.
python3 - "$RUNS" "$work/cmds" <<'PY'
import os, resource, statistics, sys, time
runs = int(sys.argv[1])
cmds = [line.rstrip("\n").split("\t") for line in open(sys.argv[2])]
rss_file = sys.argv[2] + ".rss"
def once(argv):
    # GNU time runs the monitor and reports its peak RSS (a child forked
    # from this Python would inherit Python's in ru_maxrss); its own
    # fork and exec weigh on both monitors alike.
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        fd = os.open(os.devnull, os.O_RDWR)
        for i in (0, 1):
            os.dup2(fd, i)
        os.dup2(os.open(rss_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.execv("/usr/bin/time", ["/usr/bin/time", "-f", "%M"] + argv)
    _, status, _ = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"kvm.sh: {argv[0]} exited with {status}")
    kb = int(open(rss_file).read().split()[-1])
    return wall * 1e3, kb / 1024
res = {name: [] for name, *_ in cmds}
for name, *argv in cmds:  # warm-up
    once(argv)
for _ in range(runs):
    for name, *argv in cmds:
        res[name].append(once(argv))
print("\n| monitor | wall time, median (ms) | mean ± sd (ms) | peak RSS, median (MB) |")
print("|---|---|---|---|")
for name, r in res.items():
    w = [x[0] for x in r]
    m = [x[1] for x in r]
    print(f"| {name} | {statistics.median(w):.1f} | {statistics.mean(w):.1f} ± {statistics.pstdev(w):.1f} | {statistics.median(m):.1f} |")
if len(res) == 2:
    (a, ra), (b, rb) = res.items()
    wr = statistics.median(x[0] for x in ra) / statistics.median(x[0] for x in rb)
    mr = statistics.median(x[1] for x in ra) / statistics.median(x[1] for x in rb)
    print(f"| ratio {a}/{b} | {wr:.2f} | | {mr:.2f} |")
PY
echo
echo "(${RUNS} runs each, alternating, after one warm-up run each; 1 vCPU, 64 MiB. virtkit's accelerator probe"
echo " (5 to 10 ms on a KVM that emulates guest ring 0, microseconds on hardware) runs once per host boot: its"
echo " finding is remembered in \$XDG_CACHE_HOME/virtkit/kvm-probe.json, so the warm-up run paid it here.)"
