#!/bin/sh
# /init of virtkit's default guest (built by the guest crate; busybox sh).
#
# Protocol with the host (see the guest crate's documentation):
#   /virtkit/cmd   one line of shell that exports the command's environment
#                  and sets "$@" to it (absent: an interactive shell), or,
#                  with virtkit.wait=1, the same from the console (below)
# The exit status leaves through the "sifive,test" finisher of QEMU's virt
# board at 0x100000: 0x5555 for 0, (status << 16) | 0x3333 otherwise
# (with virtkit.exit=serial: a marker line on the console, see the end).
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
	# The kernel applies the card's carrier to the interface's state at
	# most once a second (a non-urgent link-watch event), so right after
	# the fast DHCP `ip link` can still say NO-CARRIER: wait for it.
	i=0
	while read -r st </sys/class/net/eth0/operstate && [ "$st" != up ] && [ $i -lt 15 ]; do
		sleep 0.1
		i=$((i + 1))
	done
fi

# The console's real device (the kernel's /dev/console cannot become a
# controlling terminal): the last of the active consoles.
con=console
read -r cons </sys/class/tty/console/active 2>/dev/null
for c in $cons; do con=$c; done
# Its modes, to restore and to drain output with (see the session below).
stty -g </dev/$con >/run/virtkit-tty 2>/dev/null
read -r modes </run/virtkit-tty

# The session leader runs the command and waits until the terminal has sent
# its output before it exits. When a session leader with a serial terminal
# exits, the kernel hangs the terminal up, and a hang-up throws away output
# still queued in the serial driver: on a multi-hart guest the command's
# last lines (or all of a short output) were lost that way. stty applies
# the modes with TCSADRAIN, which waits until the UART sent all.
cat >/run/virtkit-session <<'VKEOF'
#!/bin/sh
"$@"
s=$?
read -r m </run/virtkit-tty && stty "$m" 2>/dev/null
exit $s
VKEOF
chmod 755 /run/virtkit-session

# The command: one line of shell that exports the environment and sets
# "$@" (the guest crate's command_script), from /virtkit/cmd or, in
# waiting mode (`virtkit.wait=1`, how `virtkit run` builds the snapshot it
# restores), from the console: with the machine set up the init says so
# and reads `V1 EPOCH SEED SCRIPT`: the host's time (the guest's clock
# continues from the snapshot, so set it to now), bytes for the entropy
# pool (clones of one snapshot must not share random numbers) and the
# script. The host pauses the machine after the marker and snapshots it;
# each restored copy gets its own line. What runs after this point runs on
# every restored start: keep it to few processes.
cmd=
if grep -q 'virtkit.wait=1' /proc/cmdline; then
	stty raw -echo </dev/$con 2>/dev/null
	echo "virtkit-init: ready for a command"
	IFS=' ' read -r ver epoch seed cmd </dev/$con || ver=
	stty "$modes" </dev/$con 2>/dev/null
	# Tell the host its input may follow now that the terminal echoes
	# again (an OSC sequence: the host removes it, terminals ignore it).
	printf '\033]6;virtkit-go\007'
	if [ "$ver" != V1 ]; then
		echo "virtkit-init: unreadable command line from the host" >&2
		devmem 0x100000 32 $(((125 << 16) | 0x3333))
		poweroff -f
	fi
	date -s "@$epoch" >/dev/null 2>&1
	echo "$seed" >/dev/urandom
elif [ -f /virtkit/cmd ]; then
	read -r cmd </virtkit/cmd
fi

# A virtio block device (device id 2) means a disk was given: wait for it
# briefly (probing is asynchronous) and mount it at /mnt.
mounted=
for d in /sys/bus/virtio/devices/*; do
	# (stderr first: with no virtio device the glob stays unexpanded)
	read -r id 2>/dev/null <"$d/device"
	[ "$id" = 0x0002 ] || continue
	i=0
	while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	# A restored guest's disk goes into a drive that was empty when the
	# snapshot was taken: the driver learns its capacity from a
	# configuration-change interrupt, asynchronously.
	i=0
	while read -r size </sys/block/vda/size 2>/dev/null && [ "$size" = 0 ] && [ $i -lt 50 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	opts=rw
	read -r ro </sys/block/vda/ro 2>/dev/null
	[ "$ro" = 1 ] && opts=ro
	if [ ! -b /dev/vda ]; then
		echo "virtkit-init: a virtio disk exists but /dev/vda did not appear" >&2
	elif mount -t ext4 -o "$opts" /dev/vda /mnt; then
		mounted=1
	else
		echo "virtkit-init: could not mount /dev/vda (ext4) at /mnt" >&2
	fi
	break
done

if [ -n "$cmd" ]; then
	eval "$cmd"
	setsid -c /run/virtkit-session "$@" <>/dev/$con >&0 2>&0
	status=$?
else
	setsid -c /run/virtkit-session sh -l <>/dev/$con >&0 2>&0
	status=$?
fi

if [ -n "$mounted" ]; then
	sync
	umount /mnt
fi
# Boards without the finisher (x86) put `virtkit.exit=serial` on the
# command line: the status goes out on the console in a marker line the
# host strips (RS, "virtkit-exit ", the status), then the machine resets.
if grep -q 'virtkit.exit=serial' /proc/cmdline; then
	printf '\036virtkit-exit %d\n' "$status"
	# Setting the modes waits until the UART has sent it (TCSADRAIN).
	stty "$modes" </dev/$con 2>/dev/null
	reboot -f
fi
if [ "$status" -eq 0 ]; then
	devmem 0x100000 32 0x5555
else
	devmem 0x100000 32 $(((status << 16) | 0x3333))
fi
# Not on a board with the finisher: power off the usual way.
poweroff -f
