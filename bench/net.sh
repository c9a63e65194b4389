#!/usr/bin/env bash
# virtkit's user-mode network vs qemu-system-riscv64's `-netdev user`
# (libslirp), side by side in one run: same Debian kernel, same initramfs
# (its init loads virtio_net and brings eth0 up by DHCP under both), same
# RAM, one hart, a virtio-net card on virtio-mmio in both.
#   guest->host  the guest pipes SIZE bytes of zeros (dd, 1 MB blocks: busybox
#                head -c reads in small pieces and costs guest CPU of its own)
#                into busybox nc to a host
#                sink on 127.0.0.1 (through 10.0.2.2); the sink closes after
#                the last byte, so the time covers delivery to the host
#   host->guest  the guest's busybox wget fetches SIZE bytes from a host HTTP
#                source on 127.0.0.1 (through 10.0.2.2) into /dev/null
#   requests     the guest runs busybox httpd behind a hostfwd; the host makes
#                REQS small HTTP GETs through the forward, one connection each
# Both transfers are timed by the guest's /proc/uptime (boot not counted);
# the request rate by the host's clock. One boot per VMM per run does all
# three. Prints medians of RUNS runs (default 1, to keep the run short) and
# the ratio virtkit/qemu of the throughputs (higher is better; the target
# for the transfers is at least 1.5). passt is not measured.
#
# Usage: bench/net.sh            (builds virtkit --release first)
# Env:   RUNS=3  SIZE=200000000  REQS=1000  MEM=512M  VIRTKIT=/path/to/virtkit
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
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${VIRTKIT:-}" ]; then
    cargo build --release -q -p virtkit
    VIRTKIT="${CARGO_TARGET_DIR:-target}/release/virtkit"
fi
command -v qemu-system-riscv64 >/dev/null || { echo "qemu-system-riscv64 (qemu-system-misc) is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }

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
    ip -4 addr show eth0 | grep -q 'inet 10.0.2.15' || echo 'no address on eth0'
    a=\$(up); dd if=/dev/zero bs=1000000 count=$((SIZE / 1000000)) 2>/dev/null | nc 10.0.2.2 $SINK; b=\$(up); echo \"tx \$a \$b\"
    a=\$(up); wget -q -O /dev/null http://10.0.2.2:$SOURCE/zeros; b=\$(up); echo \"rx \$a \$b\"
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

# One boot: prints "txMB/s rxMB/s req/s" (n/a for what failed).
measure() { # runner
    local port out pid i tx rx rq
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
    tx=$(tr -d '\r' < "$out" | awk -v s="$SIZE" '/^tx / && $3 > $2 { printf "%.3f\n", s / 1e6 / ($3 - $2) }')
    rx=$(tr -d '\r' < "$out" | awk -v s="$SIZE" '/^rx / && $3 > $2 { printf "%.3f\n", s / 1e6 / ($3 - $2) }')
    if [ -z "$tx" ] || [ -z "$rx" ] || [ "$rq" = n/a ]; then
        echo "$1: something failed; its console:" >&2
        tail -20 "$out" >&2
    fi
    echo "${tx:-n/a} ${rx:-n/a} ${rq:-n/a}"
}

median() { grep -v '^n/a$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

: > "$WORK/v"; : > "$WORK/q"
for _ in $(seq "$RUNS"); do
    measure run_virtkit >> "$WORK/v"
    measure run_qemu >> "$WORK/q"
done

printf '%-34s %12s %12s %8s\n' "benchmark (median of $RUNS)" "virtkit" "qemu slirp" "ratio"
col=1
for name in "TCP guest->host, MB/s" "TCP host->guest, MB/s" "HTTP requests/s (1 conn each)"; do
    v=$(awk -v c=$col '{ print $c }' "$WORK/v" | median)
    q=$(awk -v c=$col '{ print $c }' "$WORK/q" | median)
    if [ "$v" = n/a ] || [ "$q" = n/a ] || [ "$(echo "$q == 0" | bc)" = 1 ]; then
        printf '%-34s %12s %12s %8s\n' "$name" "$v" "$q" "n/a"
    else
        printf '%-34s %12.1f %12.1f %8.2f\n' "$name" "$v" "$q" "$(echo "$v / $q" | bc -l)"
    fi
    col=$((col + 1))
done
