#!/usr/bin/env bash
# Installs, from Debian's archive, the peers and tools the test suite compares
# virtkit against. Only missing packages are installed, so a second run is
# quick. Needs root (CI and the development machines run as root).
set -euo pipefail

pkgs=(
  qemu-utils            # qemu-img: the peer of `virtkit img`
  qemu-user-static      # qemu-riscv64-static: the peer of `virtkit emu user`
  qemu-system-misc      # qemu-system-riscv64: the peer of `virtkit vm`
  qemu-system-x86       # qemu-system-x86_64 -cpu max: the nested KVM of tests/kvm_nested.rs
  opensbi               # firmware for riscv64 guests
  gcc-riscv64-linux-gnu # cross compiler for riscv64 test programs
  libc6-dev-riscv64-cross
  e2fsprogs             # mkfs.ext4 / debugfs for guest disks
  busybox-static        # amd64 busybox for container bundles
  runc                  # the peer of `virtkit ctr`
  podman                # drives `virtkit-runc` as its OCI runtime
  slirp4netns           # Podman's user-mode network in the ctr_net test
  containerd            # containerd, ctr and the runc v2 shim: run containers through `virtkit-runc`
  hyperfine             # benchmarks
  time                  # GNU time: peak RSS in bench/ctr.sh
  cpio                  # checks our initramfs against GNU cpio
  iproute2              # ip netns / ip tuntap: the tap networking test
  gpgv                  # verifies Debian InRelease signatures
  debian-archive-keyring
  xz-utils
  binutils              # as/ld/objcopy: the small x86-64 guests of the KVM tests and bench/kvm.sh
  curl                  # drives the VM control API in tests (curl --unix-socket)
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
export DEBIAN_FRONTEND=noninteractive
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -q
  # A machine may come with a newer qemu-utils (a backport) than Debian 12's
  # QEMU system packages, which Break it: apt then refuses the whole install.
  # qemu-img must come from the same QEMU as qemu-system, so take the
  # archive's qemu-utils along (a downgrade) when they differ.
  extra=()
  sys_ver=$(apt-cache policy qemu-system-common | awk '/Candidate:/ {print $2}')
  utils_ver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [[ -n $utils_ver && -n $sys_ver && $sys_ver != "(none)" && $utils_ver != "$sys_ver" ]]; then
    echo "install-deps: qemu-utils $utils_ver does not match qemu-system $sys_ver; installing the archive's"
    extra=("qemu-utils=$sys_ver")
  fi
  apt-get install -y -q --allow-downgrades "${missing[@]}" "${extra[@]}"
fi
# A machine may come with a newer qemu-utils than Debian 12's QEMU
# packages accept: installing qemu-system-misc then removes it, and
# qemu-img is gone. Put back the one that matches.
if ! command -v qemu-img >/dev/null; then
  echo "install-deps: qemu-img was removed with a conflicting qemu-utils; reinstalling"
  apt-get install -y -q qemu-utils
fi
command -v qemu-img >/dev/null || { echo "install-deps: no qemu-img" >&2; exit 1; }
