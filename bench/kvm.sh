#!/usr/bin/env bash
# virtkit's KVM monitor against Firecracker on a tiny guest: process start,
# a guest that prints one line on the serial port and resets through the
# i8042, process exit. Wall time (hyperfine) and peak RSS (GNU time).
#
# The guest is a few instructions of 64-bit code in an ELF file at
# physical 2 MiB (built here with GNU as and ld), entered in long mode by
# both monitors, 1 vCPU, 64 MiB of RAM.
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
for tool in hyperfine as ld /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "kvm.sh: $tool is needed (scripts/install-deps.sh)" >&2; exit 2; }
done
[[ -c /dev/kvm ]] || { echo "kvm.sh: /dev/kvm is needed" >&2; exit 2; }

cargo build --release -q -p virtkit
VIRTKIT=$PWD/target/release/virtkit
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/hello.s" <<'EOF'
.intel_syntax noprefix
.code64
.globl _start
_start:
    lea rsi, [rip + msg]
1:  mov al, [rsi]
    test al, al
    jz 2f
    mov dx, 0x3f8
    out dx, al
    inc rsi
    jmp 1b
2:  mov al, 0xfe
    out 0x64, al
    jmp 2b
msg: .asciz "hello from a tiny KVM guest\n"
EOF
as --64 -o "$work/hello.o" "$work/hello.s"
ld -static -nostdlib -Ttext=0x200000 -o "$work/hello" "$work/hello.o"

vk=("$VIRTKIT" vm run --arch x86_64 --kernel "$work/hello" --mem 64M --cpus 1)
"${vk[@]}" </dev/null 2>/dev/null | grep -q "hello from a tiny KVM guest" \
  || { echo "kvm.sh: virtkit did not run the guest" >&2; exit 1; }

cmds=("${vk[*]} </dev/null >/dev/null 2>&1")
names=(virtkit)
if [[ -n ${FIRECRACKER:-} ]]; then
  [[ -x $FIRECRACKER ]] || { echo "kvm.sh: FIRECRACKER=$FIRECRACKER is not executable" >&2; exit 2; }
  cat > "$work/fc.json" <<EOF
{
  "boot-source": { "kernel_image_path": "$work/hello", "boot_args": "console=ttyS0" },
  "drives": [],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 }
}
EOF
  fc=("$FIRECRACKER" --no-api --config-file "$work/fc.json" --level Error)
  "${fc[@]}" </dev/null 2>/dev/null | grep -q "hello from a tiny KVM guest" \
    || { echo "kvm.sh: Firecracker did not run the guest" >&2; exit 1; }
  cmds+=("${fc[*]} </dev/null >/dev/null 2>&1")
  names+=(firecracker)
fi

hyperfine --style none --warmup 2 --runs "$RUNS" --export-json "$work/h.json" "${cmds[@]}" >/dev/null

rss() { # peak RSS in KiB of the monitor process, the median of 5 runs
  for _ in 1 2 3 4 5; do
    /usr/bin/time -f %M "$@" </dev/null 2>&1 >/dev/null | tail -1
  done | sort -n | sed -n 3p
}

printf '\n| monitor | wall time, mean ± sd (ms) | median (ms) | peak RSS (MB) |\n|---|---|---|---|\n'
for i in "${!cmds[@]}"; do
  read -r mean sd median < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"][int(sys.argv[2])]
print("%.1f %.1f %.1f" % (r["mean"]*1e3, r["stddev"]*1e3, r["median"]*1e3))
' "$work/h.json" "$i")
  if [[ ${names[$i]} == virtkit ]]; then kb=$(rss "${vk[@]}"); else kb=$(rss "${fc[@]}"); fi
  printf '| %s | %s ± %s | %s | %s |\n' "${names[$i]}" "$mean" "$sd" "$median" \
    "$(python3 -c "print(f'{$kb/1024:.1f}')")"
done
echo
echo "(${RUNS} runs each, 1 vCPU, 64 MiB. On a KVM that emulates guest ring 0, virtkit runs its accelerator"
echo " probe, 5 to 10 ms there (twice a 5,000-instruction loop in ring 0), beside the start of the machine; on hardware it takes microseconds.)"
