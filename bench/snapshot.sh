#!/usr/bin/env bash
# virtkit's snapshots against QEMU, side by side in one run, same Debian
# kernel and initramfs, same RAM (512 MiB) and one hart:
#   1. `virtkit run -- true`, whole process: a cold boot (--cold), a run
#      restored from the cached snapshot (the default), qemu-system-riscv64
#      booting the same kernel and initramfs, and QEMU restoring a snapshot
#      of the same waiting guest with -loadvm (kept in a qcow2 image, as
#      QEMU keeps them) and handed the same command line.
#      The same with a 16 MiB ext4 disk: virtkit restored (the disk goes
#      into the snapshot's empty drive) against QEMU booting with it.
#   2. Restored `virtkit run -- true` for 256 MiB, 1 GiB and 4 GiB of RAM
#      (the memory file is mapped, not read: it should stay flat).
#   3. Memory of 10 concurrent runs (`sleep`ing in the guest), restored from
#      one snapshot against 10 cold boots: the sum of their proportional set
#      sizes (PSS: shared pages split between their users) and of their RSS.
# Prints medians of RUNS runs (default 5) and ratios (lower is better).
#
# Usage: bench/snapshot.sh      (builds virtkit --release first)
# Env:   RUNS=5  VIRTKIT=/path/to/virtkit  CLONES=10
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
CLONES=${CLONES:-10}
WORK=$(mktemp -d /tmp/virtkit-snap-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if [ -z "${VIRTKIT:-}" ]; then
    cargo build --release -q -p virtkit
    VIRTKIT="${CARGO_TARGET_DIR:-target}/release/virtkit"
fi
command -v qemu-system-riscv64 >/dev/null || { echo "qemu-system-riscv64 (qemu-system-misc) is needed" >&2; exit 1; }

KERNEL=$("$VIRTKIT" guest path kernel)
BASE=$("$VIRTKIT" guest path initramfs)
"$VIRTKIT" guest initramfs -o "$WORK/true.cpio" -- true
APPEND="console=ttyS0 quiet panic=-1"

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
now() { date +%s.%N; }
# Wall time of a command, in seconds; its output goes to $WORK/out.
wall() {
    local s e
    s=$(now)
    "$@" > "$WORK/out" 2>&1 </dev/null || { echo "failed: $*" >&2; tail -20 "$WORK/out" >&2; exit 1; }
    e=$(now)
    echo "$e - $s" | bc -l
}
row() { # name virtkit qemu
    printf '%-44s %10.3f %10.3f %8.3f\n' "$1" "$2" "$3" "$(echo "$2 / $3" | bc -l)"
}

# QEMU's snapshot: boot the waiting guest (virtkit.wait=1, the same init
# virtkit snapshots), `savevm` into a qcow2 image attached without a device
# (so the guest sees no disk), quit.
qemu-img create -q -f qcow2 "$WORK/vmstate.qcow2" 64M
QEMU=(qemu-system-riscv64 -M virt -m 512M -smp 1 -display none -no-reboot
      -kernel "$KERNEL" -initrd "$BASE" -append "$APPEND virtkit.wait=1"
      -drive "if=none,id=vmstate,file=$WORK/vmstate.qcow2,format=qcow2")
python3 - "$WORK" "${QEMU[@]}" <<'EOF'
import os, socket, subprocess, sys, time
work, argv = sys.argv[1], sys.argv[2:]
mon = os.path.join(work, "mon")
p = subprocess.Popen(argv + ["-serial", "stdio", "-monitor", f"unix:{mon},server,nowait"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
buf, deadline = b"", time.time() + 120
while b"ready for a command" not in buf:
    if time.time() > deadline:
        sys.exit("qemu: the guest never became ready")
    chunk = os.read(p.stdout.fileno(), 4096)
    if not chunk:
        sys.exit("qemu exited before the guest was ready: " + buf[-500:].decode(errors="replace"))
    buf += chunk
s = socket.socket(socket.AF_UNIX)
s.connect(mon)
s.settimeout(120)
def command(cmd):
    s.sendall(cmd.encode() + b"\n")
    out = b""
    # The monitor echoes the command, then prints a prompt when done.
    while out.count(b"(qemu)") < 1 or not out.rstrip().endswith(b"(qemu)"):
        out += s.recv(65536)
    return out
time.sleep(0.2)
s.recv(65536)  # banner and first prompt
command("savevm boot")
s.sendall(b"quit\n")
p.wait(timeout=60)
EOF
# The line the waiting init reads: version, time, entropy, base64 of
# "virtkit-argv\0true\0".
LINE="V1 $(date +%s) 0123456789abcdef dmlydGtpdC1hcmd2AHRydWUA"
qemu_loadvm() { printf '%s\n' "$LINE" | "${QEMU[@]}" -serial stdio -monitor none -loadvm boot; }
qemu_cold() {
    qemu-system-riscv64 -M virt -m 512M -smp 1 -nographic -no-reboot \
        -kernel "$KERNEL" -initrd "$WORK/true.cpio" -append "$APPEND" "$@"
}

# Warm the snapshot cache (the first restored run builds it).
"$VIRTKIT" run -- true > /dev/null

printf '%-44s %10s %10s %8s\n' "benchmark (median of $RUNS)" "virtkit" "peer" "ratio"
cold=$(for _ in $(seq "$RUNS"); do wall "$VIRTKIT" run --cold -- true; done | median)
warm=$(for _ in $(seq "$RUNS"); do wall "$VIRTKIT" run -- true; done | median)
qcold=$(for _ in $(seq "$RUNS"); do wall qemu_cold; done | median)
qload=$(for _ in $(seq "$RUNS"); do wall qemu_loadvm; done | median)
row "run -- true: virtkit cold vs qemu boot (s)" "$cold" "$qcold"
row "run -- true: virtkit restored vs qemu boot (s)" "$warm" "$qcold"
row "run -- true: virtkit restored vs qemu -loadvm" "$warm" "$qload"

# With a disk (16 MiB of ext4, mounted at /mnt by the init): virtkit
# restores its snapshot with an empty drive and inserts the disk; QEMU
# boots with it.
truncate -s 16M "$WORK/disk.img"
mkfs.ext4 -q -F "$WORK/disk.img"
"$VIRTKIT" run --disk "$WORK/disk.img" -- true > /dev/null
dwarm=$(for _ in $(seq "$RUNS"); do wall "$VIRTKIT" run --disk "$WORK/disk.img" -- true; done | median)
dqcold=$(for _ in $(seq "$RUNS"); do wall qemu_cold -drive "file=$WORK/disk.img,if=virtio,format=raw"; done | median)
row "run --disk -- true: restored vs qemu boot (s)" "$dwarm" "$dqcold"

for mem in 256M 1G 4G; do
    "$VIRTKIT" run --mem "$mem" -- true > /dev/null
    t=$(for _ in $(seq "$RUNS"); do wall "$VIRTKIT" run --mem "$mem" -- true; done | median)
    printf '%-44s %10.3f %10s %8s\n' "run -- true restored, $mem RAM (s)" "$t" "" ""
done

# Sum of PSS and RSS (MiB) of N concurrent runs, sampled while every guest
# sleeps after printing "up".
concurrent() { # extra args for virtkit run
    local pids=() i
    for i in $(seq "$CLONES"); do
        "$VIRTKIT" run "$@" -- sh -c 'echo up; sleep 8' > "$WORK/c$i" 2>&1 </dev/null &
        pids+=($!)
    done
    local deadline=$((SECONDS + 300))
    while [ "$(cat "$WORK"/c* 2>/dev/null | grep -c '^up')" -lt "$CLONES" ]; do
        [ $SECONDS -lt $deadline ] || { echo "concurrent runs did not come up" >&2; exit 1; }
        sleep 0.2
    done
    local pss=0 rss=0 p
    for p in "${pids[@]}"; do
        pss=$((pss + $(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup")))
        rss=$((rss + $(awk '/^Rss:/ { print $2 }' "/proc/$p/smaps_rollup")))
    done
    wait "${pids[@]}"
    rm -f "$WORK"/c*
    echo "$((pss / 1024)) $((rss / 1024))"
}
read -r wpss wrss < <(concurrent)
read -r cpss crss < <(concurrent --cold)
printf '%-44s %10s %10s %8.3f\n' "$CLONES runs, sum of PSS (MiB): restored vs cold" "$wpss" "$cpss" "$(echo "$wpss / $cpss" | bc -l)"
printf '%-44s %10s %10s %8.3f\n' "$CLONES runs, sum of RSS (MiB): restored vs cold" "$wrss" "$crss" "$(echo "$wrss / $crss" | bc -l)"
