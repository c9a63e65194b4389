#!/bin/sh
# Regenerates tests/data/mirror and mirror-v2: a tiny signed Debian archive
# (suite "virtkit-test", one riscv64 package "busybox-static") before and
# after an update, and the public keyring that signs both. The tests serve it over a local HTTP server, so
# they need neither the network nor gpg; this script needs gpg and dpkg-deb.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GNUPGHOME=$work/gnupg
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key 'virtkit test archive <test@invalid>' ed25519 sign never
gpg --batch --export >"$here/test-keyring.gpg"

# archive OUT_DIR DEBIAN_REVISION: one signed archive.
archive() {
out=$1
rev=$2
rm -rf "$out" && mkdir -p "$out"
pkg=$work/pkg-$rev
mkdir -p "$pkg/DEBIAN" "$pkg/bin"
printf '#!/bin/sh\necho fake busybox %s\n' "$rev" >"$pkg/bin/busybox"
chmod 755 "$pkg/bin/busybox"
cat >"$pkg/DEBIAN/control" <<CTL
Package: busybox-static
Version: 1:1.0-$rev
Architecture: riscv64
Maintainer: virtkit <test@invalid>
Description: fake busybox for tests
CTL
mkdir -p "$out/pool/main/b/busybox"
deb=$out/pool/main/b/busybox/busybox-static_1.0-${rev}_riscv64.deb
SOURCE_DATE_EPOCH=0 dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null

d=$out/dists/virtkit-test/main/binary-riscv64
mkdir -p "$d"
{
	sed -n 's/^\(Package\|Version\|Architecture\|Maintainer\|Description\): /&/p' "$pkg/DEBIAN/control"
	echo "Filename: pool/main/b/busybox/busybox-static_1.0-${rev}_riscv64.deb"
	echo "Size: $(stat -c %s "$deb")"
	echo "SHA256: $(sha256sum "$deb" | cut -d' ' -f1)"
	echo
} >"$d/Packages"
xz -k "$d/Packages"
(cd "$out/dists/virtkit-test"
{
	echo "Origin: virtkit"
	echo "Suite: virtkit-test"
	echo "Codename: virtkit-test"
	echo "Architectures: riscv64"
	echo "Components: main"
	echo "SHA256:"
	for f in main/binary-riscv64/Packages main/binary-riscv64/Packages.xz; do
		echo " $(sha256sum "$f" | cut -d' ' -f1) $(stat -c %s "$f") $f"
	done
} >Release
gpg --batch --quiet --clearsign --output InRelease Release
rm Release main/binary-riscv64/Packages)
}

archive "$here/mirror" 1
archive "$here/mirror-v2" 2
