#!/usr/bin/env bash
# virtkit emu user vs qemu-riscv64-static, side by side, same binaries and
# inputs: busybox sha256sum (50 MB), busybox gzip -6 (20 MB), a busybox
# shell loop (100000 iterations), a CoreMark-like C kernel and an FP kernel
# (n-body steps in double, a float dot product); plus two
# rows with the same sha256sum and gzip run natively by the host's amd64
# busybox (busybox-static), to show how far emulation is from the
# physical limit; and a start-up row: 50 processes, an emulator each,
# running busybox ls (what a build or a shell script pays per command).
# Prints medians of RUNS runs (default 3) and the ratio virtkit/qemu;
# with INTERP=1 (the default) also virtkit's interpreter alone (--no-jit)
# and its ratio, to show what the JIT buys.
#
# Usage: bench/emu.sh            (builds virtkit --release first)
# Env:   RUNS=5  VIRTKIT=/path/to/virtkit  BUSYBOX=/path/to/riscv64/busybox
#        KERNEL_ITERS=20000  FP_ITERS=3000  PERF=1 (also record a perf profile of virtkit)
#        INTERP=0 (skip the interpreter-only column)
#        NATIVE_BUSYBOX=/path/to/amd64/busybox (default: busybox on PATH)
#        CLOCK=cpu (time user+sys CPU seconds instead of wall seconds: on a
#        machine shared with other jobs, wall time also counts the waits
#        for a core, which made rows jump between two speeds run to run)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
INTERP=${INTERP:-1}
CLOCK=${CLOCK:-wall}
KERNEL_ITERS=${KERNEL_ITERS:-20000}
FP_ITERS=${FP_ITERS:-3000}
WORK=$(mktemp -d /tmp/virtkit-emu-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if [ -z "${VIRTKIT:-}" ]; then
    cargo build --release -q -p virtkit
    VIRTKIT="${CARGO_TARGET_DIR:-target}/release/virtkit"
fi

if [ -z "${BUSYBOX:-}" ]; then
    # Debian's riscv64 busybox-static, as fetched (and cached) by the guest
    # crate; the emu_busybox test fetches it.
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/virtkit"
    for b in $(find "$cache" -path '*usr/bin/busybox' -type f 2>/dev/null); do
        # e_machine 0xf3 (243) = RISC-V
        if [ "$(od -An -tx1 -j18 -N1 "$b" | tr -d ' ')" = "f3" ]; then BUSYBOX=$b; fi
    done
fi
if [ -z "${BUSYBOX:-}" ]; then
    echo "riscv64 busybox not cached yet: run 'cargo test --release -p virtkit --test emu_busybox' once" >&2
    exit 1
fi

echo "preparing inputs in $WORK ..." >&2
head -c 50000000 /dev/urandom > "$WORK/50M.bin"
# Compressible 20 MB: numbers as text mixed with random base64.
# (Written whole, then cut: `| head -c` would SIGPIPE the writers, which
# pipefail turns into a silent exit of the whole script.)
{ seq 1 1500000; head -c 6000000 /dev/urandom | base64; seq 1500000 3000000; } > "$WORK/20M.txt"
truncate -s 20000000 "$WORK/20M.txt"
riscv64-linux-gnu-gcc -O2 -static -o "$WORK/kernel" crates/linux-user/tests/progs/kernel.c
riscv64-linux-gnu-gcc -O2 -static -o "$WORK/fpkernel" crates/linux-user/tests/progs/fpkernel.c -lm

# name|command (run with the emulator prefix)
BENCHES=(
    "sha256sum 50 MB|$BUSYBOX sha256sum $WORK/50M.bin"
    # Not through busybox's shell: under qemu-user (no binfmt_misc) its
    # exec of /proc/self/exe fails and it would run the host's gzip.
    "gzip -6 20 MB|$BUSYBOX gzip -6 -c $WORK/20M.txt"
    "shell loop 100000|$BUSYBOX sh -c 'i=0; while [ \$i -lt 100000 ]; do i=\$((i+1)); done; echo \$i'"
    "C kernel ($KERNEL_ITERS iter)|$WORK/kernel $KERNEL_ITERS"
    "FP kernel ($FP_ITERS iter)|$WORK/fpkernel $FP_ITERS"
)

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

time_runs() { # prefix command -> median seconds; output checked against the first run
    local prefix=$1 cmd=$2 out=$3 t0 t1
    for _ in $(seq "$RUNS"); do
        if [ "$CLOCK" = cpu ]; then
            eval "/usr/bin/time -f '%U %S' -o $WORK/time $prefix $cmd" > "$out"
            awk '{print $1 + $2}' "$WORK/time"
        else
            t0=$(now)
            eval "$prefix $cmd" > "$out"
            t1=$(now)
            echo "$t1 - $t0" | bc
        fi
    done | median
}

if [ "$INTERP" = 1 ]; then
    printf '\n| %-26s | %9s | %11s | %7s | %12s | %7s |\n' benchmark "qemu (s)" "virtkit (s)" ratio "--no-jit (s)" ratio
    printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..28})" "-----------" "-------------" "---------" "--------------" "---------"
else
    printf '\n| %-26s | %9s | %11s | %7s |\n' benchmark "qemu (s)" "virtkit (s)" ratio
    printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..28})" "-----------" "-------------" "---------"
fi
worst=0
sha_virtkit=
for b in "${BENCHES[@]}"; do
    name=${b%%|*}
    cmd=${b#*|}
    q=$(time_runs "qemu-riscv64-static" "$cmd" "$WORK/out.qemu")
    v=$(time_runs "$VIRTKIT emu user" "$cmd" "$WORK/out.virtkit")
    if ! cmp -s "$WORK/out.qemu" "$WORK/out.virtkit"; then
        echo "OUTPUT DIFFERS for $name" >&2
        diff "$WORK/out.qemu" "$WORK/out.virtkit" | head >&2 || true
    fi
    r=$(echo "scale=2; $v / $q" | bc)
    if [ "$INTERP" = 1 ]; then
        n=$(time_runs "$VIRTKIT emu user --no-jit" "$cmd" "$WORK/out.interp")
        if ! cmp -s "$WORK/out.qemu" "$WORK/out.interp"; then
            echo "OUTPUT DIFFERS (--no-jit) for $name" >&2
        fi
        ri=$(echo "scale=2; $n / $q" | bc)
        printf '| %-26s | %9.3f | %11.3f | %6.2fx | %12.3f | %6.2fx |\n' "$name" "$q" "$v" "$r" "$n" "$ri"
    else
        printf '| %-26s | %9.3f | %11.3f | %6.2fx |\n' "$name" "$q" "$v" "$r"
    fi
    worst=$(echo "if ($r > $worst) $r else $worst" | bc)
    if [ -z "$sha_virtkit" ]; then sha_virtkit=$v; sha_qemu=$q; fi
    case $name in gzip*) gz_virtkit=$v; gz_qemu=$q; cp "$WORK/out.qemu" "$WORK/out.gzip" ;; esac
done
# Start-up: 50 short processes, an emulator each (busybox ls of a small
# directory), as a build or a shell script runs them: loading, translating
# what runs once, exiting. Not one of issue 14's rows (not in "worst"
# below): it shows what a change costs programs that run briefly.
cat > "$WORK/startup.sh" <<EOF
for _ in \$(seq 50); do "\$@" $BUSYBOX ls $WORK > /dev/null || exit 1; done
echo done
EOF
q=$(time_runs "" "sh $WORK/startup.sh qemu-riscv64-static" "$WORK/out.qemu")
v=$(time_runs "" "sh $WORK/startup.sh $VIRTKIT emu user" "$WORK/out.virtkit")
r=$(echo "scale=2; $v / $q" | bc)
if [ "$INTERP" = 1 ]; then
    n=$(time_runs "" "sh $WORK/startup.sh $VIRTKIT emu user --no-jit" "$WORK/out.interp")
    printf '| %-26s | %9.3f | %11.3f | %6.2fx | %12.3f | %6.2fx |\n' "start-up, 50 processes" "$q" "$v" "$r" "$n" "$(echo "scale=2; $n / $q" | bc)"
else
    printf '| %-26s | %9.3f | %11.3f | %6.2fx |\n' "start-up, 50 processes" "$q" "$v" "$r"
fi
# The native rows: the first benchmark's sha256sum and gzip on the host's
# amd64 busybox, no emulator. Their outputs must match the emulated
# runs' (gzip's may differ with another busybox version: a warning only).
NATIVE_BUSYBOX=${NATIVE_BUSYBOX:-$(command -v busybox || true)}
native_row() { # name command emulated-output mismatch-message -> prints the row, sets $nat
    nat=$(time_runs "" "$2" "$WORK/out.native")
    if ! cmp -s "$3" "$WORK/out.native"; then
        echo "$4" >&2
    fi
    if [ "$INTERP" = 1 ]; then
        printf '| %-26s | %9s | %11.3f | %7s | %12s | %7s |\n' "$1" - "$nat" - - -
    else
        printf '| %-26s | %9s | %11.3f | %7s |\n' "$1" - "$nat" -
    fi
}
if [ -n "$NATIVE_BUSYBOX" ]; then
    eval "qemu-riscv64-static $BUSYBOX sha256sum $WORK/50M.bin" > "$WORK/out.qemu"
    native_row "sha256sum 50 MB, native" "$NATIVE_BUSYBOX sha256sum $WORK/50M.bin" \
        "$WORK/out.qemu" "OUTPUT DIFFERS for native sha256sum"
    snat=$nat
    native_row "gzip -6 20 MB, native" "$NATIVE_BUSYBOX gzip -6 -c $WORK/20M.txt" \
        "$WORK/out.gzip" "(native gzip's output differs from the emulated one's: another busybox version?)"
    echo
    echo "native rows: host amd64 busybox, no emulation; on sha256sum qemu takes" \
        "$(echo "scale=1; $sha_qemu / $snat" | bc)x native's time, virtkit $(echo "scale=1; $sha_virtkit / $snat" | bc)x;" \
        "on gzip qemu $(echo "scale=1; $gz_qemu / $nat" | bc)x, virtkit $(echo "scale=1; $gz_virtkit / $nat" | bc)x"
else
    echo
    echo "(no native busybox on PATH: native rows skipped)"
fi
echo "medians of $RUNS runs ($CLOCK seconds); worst ratio ${worst}x (target: <= 0.5x)"

if [ "${PERF:-0}" = 1 ]; then
    for b in "${BENCHES[@]}"; do
        name=${b%%|*}
        cmd=${b#*|}
        echo "== perf: $name" >&2
        eval "perf record -q -o $WORK/perf.data -- $VIRTKIT emu user $cmd" > /dev/null 2>&1
        perf report -i "$WORK/perf.data" --stdio --no-children --percent-limit 3 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
    done
fi
