#!/usr/bin/env bash
# CPU interpreter benchmark: the riscv crate's own runner (the interpreter
# with a read/write/exit-only harness, examples/run-elf.rs) against
# qemu-riscv64-static (a JIT) on the same static binaries and inputs.
# Prints median wall and user times of RUNS runs and the ratio.
# Usage: bench/cpu.sh [RUNS]   (needs gcc-riscv64-linux-gnu, qemu-user-static)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p riscv --example run-elf
RUNNER=$CARGO_TARGET_DIR/release/examples/run-elf
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CFLAGS="-O2 -march=rv64gc -ffreestanding -fno-builtin -fno-tree-loop-distribute-patterns -nostdlib -static"
for p in compute sha256 fpdiff; do
    riscv64-linux-gnu-gcc $CFLAGS -o "$WORK/$p" crates/riscv/tests/programs/$p.c
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
measure() { # prints "wall user" medians of RUNS runs of "$@"
    local walls=() users=()
    for _ in $(seq "$RUNS"); do
        local t
        t=$( { /usr/bin/time -f "%e %U" "$@" >/dev/null 2>/dev/null; } 2>&1 | tail -1)
        walls+=("${t% *}"); users+=("${t#* }")
    done
    echo "$(printf '%s\n' "${walls[@]}" | median) $(printf '%s\n' "${users[@]}" | median)"
}

printf '%-34s %10s %10s %10s %10s %8s\n' benchmark "virtkit s" "(user)" "qemu s" "(user)" ratio
row() {
    local name=$1; shift
    read -r vw vu < <(measure "$RUNNER" "$@")
    read -r qw qu < <(measure qemu-riscv64-static "$@")
    ratio=$(awk -v a="$vu" -v b="$qu" 'BEGIN { printf (b > 0 ? "%.1fx" : "-"), a / (b > 0 ? b : 1) }')
    printf '%-34s %10s %10s %10s %10s %8s\n' "$name" "$vw" "$vu" "$qw" "$qu" "$ratio"
}
row "CoreMark-like kernel (2000 iter)" "$WORK/compute" 2000
row "sha256 of 16 MiB" "$WORK/sha256" 16
row "F/D semantics sweep (softfloat)" "$WORK/fpdiff"
echo "(ratio = user-time ratio; the machine may be shared, so user time is the fairer measure)"
