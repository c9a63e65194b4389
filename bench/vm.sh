#!/usr/bin/env bash
# virtkit's RISC-V virtual machine vs qemu-system-riscv64 (TCG), side by
# side in one run, same Debian kernel, same initramfs, same RAM and harts:
#   boot   boot to the init, run `true`, power off (whole process, wall time)
#   sha256 busybox sha256sum of a 20 MB file inside the booted guest
#          (guest uptime before/after, so boot time is not counted)
# for 1 and 4 harts. Prints medians of RUNS runs (default 3) and the ratio
# virtkit/qemu (lower is better; issue 14's target is at most 0.5).
# A run that fails or outlives TIMEOUT seconds (QEMU's 4-hart boot hangs
# now and then) is left out of its median and reported on stderr; the
# table is still printed, and the script then exits 1.
#
# Usage: bench/vm.sh            (builds virtkit --release first)
# Env:   RUNS=5  MEM=512M  VIRTKIT=/path/to/virtkit  HARTS="1 4"  TIMEOUT=120
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
MEM=${MEM:-512M}
HARTS=${HARTS:-"1 4"}
TIMEOUT=${TIMEOUT:-120}
WORK=$(mktemp -d /tmp/virtkit-vm-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if [ -z "${VIRTKIT:-}" ]; then
    cargo build --release -q -p virtkit
    VIRTKIT="${CARGO_TARGET_DIR:-target}/release/virtkit"
fi
command -v qemu-system-riscv64 >/dev/null || { echo "qemu-system-riscv64 (qemu-system-misc) is needed" >&2; exit 1; }

KERNEL=$("$VIRTKIT" guest path kernel)
"$VIRTKIT" guest initramfs -o "$WORK/boot.cpio" -- true
"$VIRTKIT" guest initramfs -o "$WORK/sha.cpio" -- sh -c \
    'head -c 20000000 /dev/urandom > /tmp/f; a=$(cut -d" " -f1 /proc/uptime); sha256sum /tmp/f > /dev/null; b=$(cut -d" " -f1 /proc/uptime); echo "compute $a $b"'
APPEND="console=ttyS0 quiet panic=-1"

run_virtkit() { # harts initrd
    "$VIRTKIT" vm run --cpus "$1" --mem "$MEM" --kernel "$KERNEL" --initrd "$2" --append "$APPEND" --timeout "$TIMEOUT" </dev/null
}
run_qemu() { # harts initrd
    # (QEMU's boot hangs once in a while: bounded as virtkit's is.)
    timeout "$TIMEOUT" qemu-system-riscv64 -M virt -smp "$1" -m "$MEM" -nographic -no-reboot \
        -kernel "$KERNEL" -initrd "$2" -append "$APPEND" </dev/null
}

# (Nothing when every run failed.)
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# One run of runner $1 with $2 harts on initramfs $3, its output in
# $WORK/out; a failure or timeout is reported, counted and returns 1.
one_run() { # runner harts initrd
    if ! "$1" "$2" "$3" > "$WORK/out" 2>&1; then
        echo "$1 with $2 hart(s) failed or ran past ${TIMEOUT}s; run left out:" >&2
        tail -5 "$WORK/out" >&2
        echo x >> "$WORK/failed"
        return 1
    fi
}

# Wall time of one boot, in seconds (nothing for a failed run).
time_boot() { # runner harts
    local s e
    s=$(date +%s.%N)
    one_run "$1" "$2" "$WORK/boot.cpio" || return 0
    e=$(date +%s.%N)
    echo "$e - $s" | bc -l
}

# In-guest seconds of the sha256sum (nothing for a failed run).
time_compute() { # runner harts
    one_run "$1" "$2" "$WORK/sha.cpio" || return 0
    tr -d '\r' < "$WORK/out" | awk '/^compute / { printf "%.3f\n", $3 - $2 }'
}

printf '%-22s %12s %12s %8s\n' "benchmark (median of $RUNS)" "virtkit (s)" "qemu (s)" "ratio"
for h in $HARTS; do
    for kind in boot compute; do
        v=$(for _ in $(seq "$RUNS"); do "time_$kind" run_virtkit "$h"; done | median)
        q=$(for _ in $(seq "$RUNS"); do "time_$kind" run_qemu "$h"; done | median)
        name="boot+poweroff"; [ "$kind" = compute ] && name="sha256sum 20 MB"
        if [ -z "$v" ] || [ -z "$q" ] || [ "$(echo "$q == 0" | bc)" = 1 ]; then
            printf '%-22s %12s %12s %8s\n' "$name, $h hart(s)" "${v:-n/a}" "${q:-n/a}" "n/a"
        else
            printf '%-22s %12.2f %12.2f %8.2f\n' "$name, $h hart(s)" "$v" "$q" "$(echo "$v / $q" | bc -l)"
        fi
    done
done
if [ -s "$WORK/failed" ]; then
    echo "$(wc -l < "$WORK/failed") run(s) failed or timed out (see above)" >&2
    exit 1
fi
