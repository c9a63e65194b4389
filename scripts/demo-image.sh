#!/usr/bin/env bash
# Builds virtkit and, with `virtkit img` only, makes a small demo qcow2
# chain: a base image filled from a generated raw file (sparse convert), an
# overlay on it written by `img bench -w`, and an internal snapshot of the
# overlay. Prints the overlay's path on stdout (everything else goes to
# stderr), so the README can run:
#   cargo run --release -- img info --output=json "$(scripts/demo-image.sh)"
# The images live in $XDG_CACHE_HOME/virtkit/demo-image (default ~/.cache).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p virtkit >&2
VK="${CARGO_TARGET_DIR:-target}/release/virtkit"
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/virtkit/demo-image"
mkdir -p "$DIR"
rm -f "$DIR/seed.raw" "$DIR/base.qcow2" "$DIR/overlay.qcow2"

# A 64 MiB raw disk: 4 MiB of text at the start, zeros elsewhere (the zeros
# stay unallocated in the qcow2: sparse detection).
truncate -s 64M "$DIR/seed.raw"
# (`yes` dies of SIGPIPE when head has enough: not an error.)
{ yes "virtkit demo disk: written by scripts/demo-image.sh" || true; } | head -c 4M |
  dd of="$DIR/seed.raw" conv=notrunc status=none

"$VK" img convert -f raw -O qcow2 "$DIR/seed.raw" "$DIR/base.qcow2" >&2
"$VK" img create -f qcow2 -b base.qcow2 -F qcow2 "$DIR/overlay.qcow2" >&2
# Copy-on-write: 16 x 64 KiB of 0x42 land in the overlay, the base is untouched.
"$VK" img bench -w -c 16 -d 4 -s 64k -o 1M --pattern 66 "$DIR/overlay.qcow2" >&2
"$VK" img snapshot -c demo "$DIR/overlay.qcow2" >&2
"$VK" img check "$DIR/overlay.qcow2" >&2
rm -f "$DIR/seed.raw"
echo "$DIR/overlay.qcow2"
