#!/bin/sh
# /init of virtkit's default guest (built by the guest crate; busybox sh).
#
# Protocol with the host (see the guest crate's documentation):
#   /virtkit/argv  the command, NUL-separated (absent: an interactive shell)
#   /virtkit/env   extra environment, NUL-separated KEY=VALUE (optional)
# The exit status leaves through the "sifive,test" finisher of QEMU's virt
# board at 0x100000: 0x5555 for 0, (status << 16) | 0x3333 otherwise.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM="${TERM:-vt100}"
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /mnt
mount -t devpts devpts /dev/pts
ln -sf /proc/self/fd /dev/fd 2>/dev/null

rel=$(uname -r)
if [ -f "/lib/modules/$rel/virtkit.order" ]; then
	while read -r m; do
		out=$(insmod "/lib/modules/$rel/$m.ko" 2>&1) ||
			case "$out" in *"File exists"*) ;; *) echo "virtkit-init: insmod $m: $out" >&2 ;; esac
	done <"/lib/modules/$rel/virtkit.order"
fi

# A virtio network card (device id 1) means a network: bring eth0 up and
# ask for an address by DHCP (virtkit's user-mode network answers at once;
# `virtkit.dhcp=0` on the kernel command line skips it, for static setups).
# Without a card nothing here waits.
has_nic=
for d in /sys/bus/virtio/devices/*; do
	[ "$(cat "$d/device" 2>/dev/null)" = 0x0001 ] && has_nic=1
done
if [ -n "$has_nic" ]; then
	i=0
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	ip link set lo up
	if [ ! -e /sys/class/net/eth0 ]; then
		echo "virtkit-init: a virtio network card exists but eth0 did not appear" >&2
	elif ip link set eth0 up && ! grep -q 'virtkit.dhcp=0' /proc/cmdline; then
		mkdir -p /etc
		cat >/run/virtkit-udhcpc <<'VKEOF'
#!/bin/sh
# udhcpc's hook: $1 is the event, the lease comes in the environment.
case "$1" in
deconfig)
	ip addr flush dev "$interface"
	;;
bound | renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	for r in $router; do
		ip route replace default via "$r" dev "$interface"
		break
	done
	: >/etc/resolv.conf
	[ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
	for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
	;;
esac
exit 0
VKEOF
		chmod 755 /run/virtkit-udhcpc
		udhcpc -i eth0 -q -n -t 3 -T 1 -s /run/virtkit-udhcpc >/dev/null 2>&1 ||
			echo "virtkit-init: no DHCP answer on eth0" >&2
	fi
fi

# The session leader runs the command and waits until the terminal has sent
# its output before it exits. When a session leader with a serial terminal
# exits, the kernel hangs the terminal up, and a hang-up throws away output
# still queued in the serial driver: on a multi-hart guest the command's
# last lines (or all of a short output) were lost that way. stty applies the
# unchanged modes with TCSADRAIN, which waits until the UART sent all.
cat >/run/virtkit-session <<'VKEOF'
#!/bin/sh
"$@"
s=$?
stty "$(stty -g 2>/dev/null)" 2>/dev/null
exit $s
VKEOF
chmod 755 /run/virtkit-session

# Waiting mode (`virtkit.wait=1`, how `virtkit run` builds the snapshot it
# restores): with the machine set up, say so on the console and read the
# command from it as one line, `V1 EPOCH SEED BASE64`: the host's time
# (the guest's clock continues from the snapshot, so set it to now), bytes
# for the entropy pool (clones of one snapshot must not share random
# numbers), and the base64 of "ENV... virtkit-argv ARGV..." (NUL-separated;
# no argv: an interactive shell). The host pauses the machine after the
# marker and snapshots it; each restored copy gets its own line.
if grep -q 'virtkit.wait=1' /proc/cmdline; then
	saved=$(stty -g 2>/dev/null)
	stty raw -echo 2>/dev/null
	echo "virtkit-init: ready for a command"
	IFS=' ' read -r ver epoch seed b64 || ver=
	stty "$saved" 2>/dev/null
	if [ "$ver" != V1 ]; then
		echo "virtkit-init: unreadable command line from the host" >&2
		devmem 0x100000 32 $(((125 << 16) | 0x3333))
		poweroff -f
	fi
	date -s "@$epoch" >/dev/null 2>&1
	echo "$seed" >/dev/urandom
	if [ -n "$b64" ]; then
		echo "$b64" | base64 -d >/run/virtkit-cmd
	fi
elif [ -s /virtkit/argv ]; then
	# The command reaches sh as "$@" through xargs -0, which alone can read
	# NUL-separated words; env entries come first, up to a marker word.
	{
		[ -f /virtkit/env ] && cat /virtkit/env
		printf 'virtkit-argv\0'
		cat /virtkit/argv
	} >/run/virtkit-cmd
fi

# A virtio block device (device id 2) means a disk was given: wait for it
# briefly (probing is asynchronous) and mount it at /mnt.
has_disk=
for d in /sys/bus/virtio/devices/*; do
	[ "$(cat "$d/device" 2>/dev/null)" = 0x0002 ] && has_disk=1
done
if [ -n "$has_disk" ]; then
	i=0
	while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	opts=rw
	[ "$(cat /sys/block/vda/ro 2>/dev/null)" = 1 ] && opts=ro
	if [ -b /dev/vda ]; then
		mount -t ext4 -o "$opts" /dev/vda /mnt || echo "virtkit-init: could not mount /dev/vda (ext4) at /mnt" >&2
	else
		echo "virtkit-init: a virtio disk exists but /dev/vda did not appear" >&2
	fi
fi

status=0
if [ -s /run/virtkit-cmd ]; then
	rm -f /run/virtkit-status
	xargs -0 -x -a /run/virtkit-cmd sh -c '
		while [ $# -gt 0 ] && [ "$1" != virtkit-argv ]; do export "$1"; shift; done
		shift
		setsid cttyhack /run/virtkit-session "$@"
		echo $? >/run/virtkit-status' virtkit-init
	status=$(cat /run/virtkit-status 2>/dev/null || echo 127)
else
	setsid cttyhack /run/virtkit-session sh -l
	status=$?
fi

sync
grep -q ' /mnt ' /proc/mounts && umount /mnt
# The command's last output can still sit in the serial driver's buffer,
# and the finisher cuts power at once: drain it first (stty applies the
# unchanged modes with TCSADRAIN, which waits until the UART sent all).
stty -F /dev/console "$(stty -F /dev/console -g 2>/dev/null)" 2>/dev/null
if [ "$status" -eq 0 ]; then
	devmem 0x100000 32 0x5555
else
	devmem 0x100000 32 $(((status << 16) | 0x3333))
fi
# Not on a board with the finisher: power off the usual way.
poweroff -f
