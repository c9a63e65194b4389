#!/usr/bin/env bash
# virtkit's user-mode network vs qemu-system-riscv64's `-netdev user`
# (libslirp) and, when Debian's `passt` is installed, QEMU with passt
# (`-netdev stream` to passt's UNIX socket), side by side in one run: same
# Debian kernel, same initramfs (its init loads virtio_net and brings eth0 up
# by DHCP under all three), same RAM, one hart, a virtio-net card on
# virtio-mmio in all.
#   guest->host  the guest pipes SIZE bytes of zeros (dd, 1 MB blocks: busybox
#                head -c reads in small pieces and costs guest CPU of its own)
#                into busybox nc to a host sink on 127.0.0.1, through the
#                guest's default gateway (see below); the sink closes after
#                the last byte, so the time covers delivery to the host
#   host->guest  the guest's busybox wget fetches SIZE bytes from a host HTTP
#                source on 127.0.0.1 (through the gateway) into /dev/null
#   requests     the guest runs busybox httpd behind a forward of a port on
#                127.0.0.1; the host makes REQS small HTTP GETs through it,
#                one connection each
# The gateway is whatever DHCP gave the guest: 10.0.2.2 under virtkit and
# slirp; under passt the guest gets the host's own address and the host's
# default gateway (192.0.2.1 if the host routes via 192.0.2.1), and passt
# maps TCP to that gateway address onto the host's 127.0.0.1 (its default;
# --no-map-gw turns it off), so all traffic stays on the host's loopback.
# passt runs as this script's child (foreground, --one-off: it exits when
# QEMU closes its socket; killed at the end in any case), its socket in the
# script's temp dir, with `-t 127.0.0.1/PORT:8080` for the forward.
# Both transfers are timed by the guest's /proc/uptime (boot not counted);
# the request rate by the host's clock. One boot per VMM per run does all
# three; the VMMs take turns within a run. Prints medians of RUNS runs
# (default 1, to keep the run short) and the ratios virtkit/qemu of the
# throughputs (higher is better; the target for the transfers is at least
# 1.5 against slirp). Without passt its column says n/a and a note says why.
#
# Usage: bench/net.sh            (builds virtkit --release first)
# Env:   RUNS=3  SIZE=200000000  REQS=1000  MEM=512M  VIRTKIT=/path/to/virtkit
#        PASST=/path/to/passt (default: passt on PATH; PASST=none skips it)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-1}
SIZE=${SIZE:-200000000}
REQS=${REQS:-1000}
MEM=${MEM:-512M}
TIMEOUT=${TIMEOUT:-900}
[ $((SIZE % 1000000)) = 0 ] && [ "$SIZE" -gt 0 ] || { echo "SIZE must be a positive multiple of 1000000, not $SIZE" >&2; exit 1; }
WORK=$(mktemp -d /tmp/virtkit-net-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    # passt is started inside the QEMU runner's subshell, which leaves its
    # pid here; --one-off makes it exit with QEMU, this is the safety net.
    [ -s "$WORK/passt.pid" ] && kill "$(cat "$WORK/passt.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${VIRTKIT:-}" ]; then
    cargo build --release -q -p virtkit
    VIRTKIT="${CARGO_TARGET_DIR:-target}/release/virtkit"
fi
command -v qemu-system-riscv64 >/dev/null || { echo "qemu-system-riscv64 (qemu-system-misc) is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
PASST=${PASST:-$(command -v passt || true)}
PASST_NOTE=
if [ "$PASST" = none ]; then
    PASST_NOTE="qemu passt: not measured (PASST=none)"
    PASST=
elif [ -z "$PASST" ]; then
    PASST_NOTE="qemu passt: not measured, passt is not installed (Debian: apt-get install passt)"
elif [ ! -x "$PASST" ]; then
    PASST_NOTE="qemu passt: not measured, $PASST is not an executable"
    PASST=
elif ! qemu-system-riscv64 -netdev help | grep -qx stream; then
    # -netdev stream (QEMU 7.2 and later) is how QEMU talks to passt's socket.
    PASST_NOTE="qemu passt: not measured, this qemu-system-riscv64 has no -netdev stream (QEMU 7.2 or later is needed)"
    PASST=
fi

# Host side: a sink (counts SIZE bytes, then closes) and an HTTP source
# (answers any request with SIZE zero bytes), both on 127.0.0.1, on ports
# the kernel picks; the ports go to $WORK/ports.
cat > "$WORK/host.py" <<'PY'
import socket, sys, threading
size, portfile = int(sys.argv[1]), sys.argv[2]
def listener():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s
def sink(c):
    with c:
        c.settimeout(600)
        n = 0
        while n < size:
            b = c.recv(1 << 20)
            if not b:
                break
            n += len(b)
        print("sink got", n, file=sys.stderr, flush=True)
def source(c):
    with c:
        c.settimeout(600)
        req = b""
        while b"\r\n\r\n" not in req:
            b = c.recv(4096)
            if not b:
                return
            req += b
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = bytes(1 << 20)
        left = size
        while left > 0:
            n = min(left, len(chunk))
            c.sendall(chunk[:n])
            left -= n
def serve(s, f):
    while True:
        c, _ = s.accept()
        threading.Thread(target=f, args=(c,), daemon=True).start()
a, b = listener(), listener()
with open(portfile + ".tmp", "w") as p:
    p.write("%d %d\n" % (a.getsockname()[1], b.getsockname()[1]))
import os; os.rename(portfile + ".tmp", portfile)
threading.Thread(target=serve, args=(a, sink), daemon=True).start()
serve(b, source)
PY

# Host side of the request rate: REQS GETs through the forward, one
# connection each (busybox httpd closes after every answer); prints req/s.
cat > "$WORK/reqs.py" <<'PY'
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
t = time.monotonic()
for _ in range(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/index.html")
    r = c.getresponse()
    body = r.read()
    if r.status != 200 or body != b"hello\n":
        sys.exit("bad answer: %d %r" % (r.status, body[:40]))
    c.close()
print("%.3f" % (n / (time.monotonic() - t)))
PY

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

python3 "$WORK/host.py" "$SIZE" "$WORK/ports" 2> "$WORK/host.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/ports" ] && break; sleep 0.1; done
[ -s "$WORK/ports" ] || { echo "the host servers did not start:" >&2; cat "$WORK/host.log" >&2; exit 1; }
read -r SINK SOURCE < "$WORK/ports"

KERNEL=$("$VIRTKIT" guest path kernel)
"$VIRTKIT" guest initramfs -o "$WORK/net.cpio" -- sh -c "
    up() { cut -d' ' -f1 /proc/uptime; }
    ip -4 addr show eth0 | grep -q 'inet ' || echo 'no address on eth0'
    gw=\$(ip route | awk '/^default/ { print \$3; exit }')
    [ -n \"\$gw\" ] || echo 'no default route'
    a=\$(up); dd if=/dev/zero bs=1000000 count=$((SIZE / 1000000)) 2>/dev/null | nc \$gw $SINK; b=\$(up); echo \"tx \$a \$b\"
    a=\$(up); if wget -q -O /dev/null http://\$gw:$SOURCE/zeros; then b=\$(up); echo \"rx \$a \$b\"; else echo 'rx failed'; fi
    mkdir -p /www; echo hello > /www/index.html
    httpd -p 8080 -h /www && echo ready
    sleep 3600"
APPEND="console=ttyS0 quiet panic=-1"

run_virtkit() { # hostport
    exec timeout "$TIMEOUT" "$VIRTKIT" vm run --mem "$MEM" --kernel "$KERNEL" --initrd "$WORK/net.cpio" \
        --append "$APPEND" --nic "user,hostfwd=tcp:127.0.0.1:$1-:8080" </dev/null
}
run_qemu() { # hostport
    exec timeout "$TIMEOUT" qemu-system-riscv64 -M virt -smp 1 -m "$MEM" -nographic -no-reboot \
        -kernel "$KERNEL" -initrd "$WORK/net.cpio" -append "$APPEND" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$1-:8080" -device virtio-net-device,netdev=n0 </dev/null
}
# passt drops root for nobody before it binds its socket (and cannot then
# open a --pid file in a root-only directory), so as root its socket lives in
# a directory nobody may write. Its log (opened before the drop) goes to
# $WORK/passt.log.
if [ -n "$PASST" ]; then
    mkdir "$WORK/passt"
    if [ "$(id -u)" = 0 ]; then chmod 711 "$WORK"; chown nobody "$WORK/passt"; fi
fi
# Known limit of Debian bookworm's passt (0.0~git20230309): it resets a
# guest->host TCP connection about 24 s after it opened, whatever the MTU
# (-m 65520 too) and whatever was sent: a packet capture (passt -p) shows
# passt's RST with seq/ack in order, everything acknowledged and no stall
# before it. The guest's nc then says "Connection reset by peer" and the sink
# has some 26 to 30 MB; 200 MB at this emulated guest's ~1 MB/s needs longer,
# so that row is n/a for passt and a note after the table gives the rate
# until the reset. Shorter transfers (SIZE=20000000) complete. The other
# two rows take well under 24 s a connection.
run_passt() { # hostport
    local sock="$WORK/passt/sock" i
    rm -f "$sock"
    # -u none: passt would otherwise also forward the UDP port of the same
    # number, which nothing here uses.
    "$PASST" --foreground --one-off --socket "$sock" --log-file "$WORK/passt.log" \
        -t "127.0.0.1/$1:8080" -u none &
    echo $! > "$WORK/passt.pid"
    for i in $(seq 100); do
        [ -S "$sock" ] && break
        kill -0 "$(cat "$WORK/passt.pid")" 2>/dev/null || break
        sleep 0.1
    done
    [ -S "$sock" ] || { echo "passt did not open its socket; its log:"; cat "$WORK/passt.log"; exit 1; }
    exec timeout "$TIMEOUT" qemu-system-riscv64 -M virt -smp 1 -m "$MEM" -nographic -no-reboot \
        -kernel "$KERNEL" -initrd "$WORK/net.cpio" -append "$APPEND" \
        -netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$sock" -device virtio-net-device,netdev=n0 </dev/null
}

# One boot: prints "txMB/s rxMB/s req/s" (n/a for what failed).
measure() { # runner
    local port out pid i tx rx rq sunk
    # The host sink logs every full delivery: a guest->host figure counts
    # only if the bytes reached it (through the gateway onto 127.0.0.1).
    sunk=$(grep -c "^sink got $SIZE\$" "$WORK/host.log" || true)
    port=$(free_port)
    out="$WORK/out.$1"
    "$1" "$port" > "$out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for i in $(seq "$TIMEOUT"); do
        grep -q '^ready' "$out" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    rq=n/a
    if grep -q '^ready' "$out"; then
        rq=$(timeout 600 python3 "$WORK/reqs.py" "$port" "$REQS" 2>>"$WORK/reqs.log") || rq=n/a
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ "$1" = run_passt ] && [ -s "$WORK/passt.pid" ]; then
        kill "$(cat "$WORK/passt.pid")" 2>/dev/null || true
        rm -f "$WORK/passt.pid"
    fi
    tx=$(tr -d '\r' < "$out" | awk -v s="$SIZE" '/^tx / && $3 > $2 { printf "%.3f\n", s / 1e6 / ($3 - $2) }')
    if [ "$(grep -c "^sink got $SIZE\$" "$WORK/host.log" || true)" -le "$sunk" ]; then
        echo "$1: the host sink did not get all $SIZE bytes" >&2
        # A connection cut short still says how fast it went until then.
        tr -d '\r' < "$out" | awk -v r="$1" -v n="$(tail -n 1 "$WORK/host.log" | awk '/^sink got/ { print $3 }')" \
            '/reset by peer/ { reset = 1 } /^tx / && reset && n > 0 && $3 > $2 {
                printf "%s: guest->host reset by the peer after %.1f MB in %.1f s (%.1f MB/s until then)\n", r, n / 1e6, $3 - $2, n / 1e6 / ($3 - $2) }' \
            >> "$WORK/notes"
        tx=
    fi
    rx=$(tr -d '\r' < "$out" | awk -v s="$SIZE" '/^rx / && $3 > $2 { printf "%.3f\n", s / 1e6 / ($3 - $2) }')
    if [ -z "$tx" ] || [ -z "$rx" ] || [ "$rq" = n/a ]; then
        echo "$1: something failed; its console:" >&2
        tail -20 "$out" >&2
    fi
    echo "${tx:-n/a} ${rx:-n/a} ${rq:-n/a}"
}

median() { { grep -v '^n/a$' || true; } | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

: > "$WORK/v"; : > "$WORK/q"; : > "$WORK/p"; : > "$WORK/notes"
for _ in $(seq "$RUNS"); do
    measure run_virtkit >> "$WORK/v"
    measure run_qemu >> "$WORK/q"
    if [ -n "$PASST" ]; then measure run_passt >> "$WORK/p"; else echo "n/a n/a n/a" >> "$WORK/p"; fi
done

ratio() { # v q
    if [ "$1" = n/a ] || [ "$2" = n/a ] || [ "$(echo "$2 == 0" | bc)" = 1 ]; then
        echo n/a
    else
        printf '%.2f\n' "$(echo "$1 / $2" | bc -l)"
    fi
}
num() { if [ "$1" = n/a ]; then echo n/a; else printf '%.1f\n' "$1"; fi; }
printf '%-32s %9s %11s %11s %11s %11s\n' "benchmark (median of $RUNS)" "virtkit" "qemu slirp" "qemu passt" "vk/slirp" "vk/passt"
col=1
for name in "TCP guest->host, MB/s" "TCP host->guest, MB/s" "HTTP requests/s (1 conn each)"; do
    v=$(awk -v c=$col '{ print $c }' "$WORK/v" | median)
    q=$(awk -v c=$col '{ print $c }' "$WORK/q" | median)
    p=$(awk -v c=$col '{ print $c }' "$WORK/p" | median)
    printf '%-32s %9s %11s %11s %11s %11s\n' "$name" "$(num "$v")" "$(num "$q")" "$(num "$p")" "$(ratio "$v" "$q")" "$(ratio "$v" "$p")"
    col=$((col + 1))
done
[ -z "$PASST_NOTE" ] || echo "$PASST_NOTE"
[ ! -s "$WORK/notes" ] || cat "$WORK/notes"
