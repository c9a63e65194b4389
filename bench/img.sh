#!/usr/bin/env bash
# `virtkit img bench` against `qemu-img bench`, side by side in one run.
#
# Rows: 4 KiB random read/write and 64 KiB sequential read/write, on a fresh
# qcow2, on a qcow2 overlay over a qcow2 base, and on raw. Each cell is the
# median of RUNS runs; the two tools alternate run by run on identical,
# freshly prepared images, so page-cache warmth and disk state are the same.
#
# Fairness: both tools run with qemu-img bench's defaults: cache=writeback
# (host page cache, no O_DIRECT, no flush per request: `-t writeback`, which
# is also what virtkit does by default) and aio=threads (qemu runs the
# requests on a thread pool; virtkit runs DEPTH worker threads). Neither
# timing includes the final flush at close. "Random" 4 KiB requests use
# qemu-img bench's only addressing mode: a fixed step (-S) that is a large
# prime number of 4 KiB blocks, wrapping modulo the image size, which visits
# the image's blocks in a scattered order, identically for both tools.
#
# Read rows read an image filled with random data (converted by qemu-img);
# write rows write into an image created just before the run (allocating
# writes; in the overlay, 4 KiB writes also copy the rest of each cluster
# from the base).
#
# Usage: bench/img.sh   (RUNS=5 SIZE_MB=256 by default; VIRTKIT=binary to skip
# the build; TMPDIR picks the file system of the images: TMPDIR=/dev/shm
# measures the engines without disk noise, e.g. on a busy shared machine)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
SIZE_MB=${SIZE_MB:-256}
# VIRTKIT=path/to/virtkit skips the build (e.g. to bench an existing binary).
if [ -n "${VIRTKIT:-}" ]; then
  VK=$VIRTKIT
else
  cargo build --release -q -p virtkit
  VK="${CARGO_TARGET_DIR:-target}/release/virtkit"
fi
command -v qemu-img >/dev/null || { echo "qemu-img not found (apt-get install qemu-utils)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/virtkit-img-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

SIZE=$((SIZE_MB << 20))
# Random data, converted once into the read-only inputs.
head -c "$SIZE" /dev/urandom >"$WORK/data.raw"
qemu-img convert -f raw -O qcow2 "$WORK/data.raw" "$WORK/data.qcow2"

# prepare KIND MODE PATH: make the image a run uses.
prepare() {
  local kind=$1 mode=$2 img=$3
  rm -f "$img" "$img.base"
  case "$kind/$mode" in
    qcow2/read) cp "$WORK/data.qcow2" "$img" ;;
    qcow2/write) qemu-img create -q -f qcow2 "$img" "$SIZE" ;;
    overlay/*)
      cp "$WORK/data.qcow2" "$img.base"
      qemu-img create -q -f qcow2 -b "$img.base" -F qcow2 "$img" ;;
    raw/*) cp "$WORK/data.raw" "$img" ;;
  esac
}

# One timed run: prints seconds.
run_one() {
  local tool=$1 fmt=$2 img=$3; shift 3
  local out
  if [ "$tool" = qemu ]; then
    out=$(nice qemu-img bench -q -f "$fmt" "$@" "$img")
  else
    out=$(nice "$VK" img bench -f "$fmt" "$@" "$img")
  fi
  sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' <<<"$out"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# 4 KiB "random": step of 7919 blocks (prime, coprime with the block count).
RAND_STEP=$((7919 * 4096))
declare -A ARGS=(
  [rand-read-4k]="-c 40000 -d 64 -s 4096 -S $RAND_STEP"
  [rand-write-4k]="-w -c 20000 -d 64 -s 4096 -S $RAND_STEP"
  [seq-read-64k]="-c $((SIZE / 65536)) -d 8 -s 65536"
  [seq-write-64k]="-w -c $((SIZE / 65536)) -d 8 -s 65536"
)
TESTS=(rand-read-4k rand-write-4k seq-read-64k seq-write-64k)

printf '%-9s %-14s %14s %14s %8s\n' image test qemu-img virtkit ratio
printf '%-9s %-14s %14s %14s %8s\n' --------- -------------- -------------- -------------- --------
for kind in qcow2 overlay raw; do
  fmt=qcow2; [ "$kind" = raw ] && fmt=raw
  for t in "${TESTS[@]}"; do
    mode=read; [[ $t == *write* ]] && mode=write
    read -r -a args <<<"${ARGS[$t]}"
    count=${args[1]}; bs=${args[5]}
    [ "$mode" = write ] && { count=${args[2]}; bs=${args[6]}; }
    q=(); v=()
    for _ in $(seq "$RUNS"); do
      prepare "$kind" "$mode" "$WORK/q.img"
      q+=("$(run_one qemu "$fmt" "$WORK/q.img" "${args[@]}")")
      prepare "$kind" "$mode" "$WORK/v.img"
      v+=("$(run_one virtkit "$fmt" "$WORK/v.img" "${args[@]}")")
    done
    qm=$(printf '%s\n' "${q[@]}" | median)
    vm=$(printf '%s\n' "${v[@]}" | median)
    if [ "$bs" = 4096 ]; then
      unit=IOPS
      qt=$(awk -v c="$count" -v s="$qm" 'BEGIN {printf "%.0f", c / s}')
      vt=$(awk -v c="$count" -v s="$vm" 'BEGIN {printf "%.0f", c / s}')
    else
      unit=MiB/s
      qt=$(awk -v c="$count" -v b="$bs" -v s="$qm" 'BEGIN {printf "%.0f", c * b / 1048576 / s}')
      vt=$(awk -v c="$count" -v b="$bs" -v s="$vm" 'BEGIN {printf "%.0f", c * b / 1048576 / s}')
    fi
    ratio=$(awk -v a="$vt" -v b="$qt" 'BEGIN {printf "%.2f", a / b}')
    printf '%-9s %-14s %14s %14s %8s\n' "$kind" "$t" "$qt $unit" "$vt $unit" "${ratio}x"
  done
done
echo
echo "ratio = virtkit / qemu-img throughput (higher is better); medians of $RUNS runs, image $SIZE_MB MiB"
