#!/usr/bin/env bash
# virtkit-runc against runc, side by side in one run (hyperfine medians):
#   run                 `run` of /bin/true in a busybox bundle
#   create+start+delete the same container through the three commands
# and the peak RSS of the runtime process (getrusage of the children).
# crun is tried if installed (it refuses this host's hybrid cgroups).
# virtkit-runc runs twice: as it is (it re-executes itself from a read-only
# detached mount of its binary against CVE-2019-5736) and with
# VIRTKIT_RUNC_SEAL=memfd (the fallback: a sealed memfd copy, as runc 1.1).
# Usage: bench/ctr.sh [RUNS]    (needs root; builds virtkit-runc --release,
# or takes VIRTKIT_RUNC_BIN). delete --force: /bin/true may still be exiting.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-30}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -n "${VIRTKIT_RUNC_BIN:-}" ]; then
    VK=$(realpath "$VIRTKIT_RUNC_BIN")     # an already built binary
else
    cargo build --release -q -p virtkit --bin virtkit-runc
    VK=$(realpath "$CARGO_TARGET_DIR/release/virtkit-runc")
fi
RUNC=$(command -v runc)
W=$(mktemp -d /tmp/virtkit-bench-ctr.XXXXXX)
cleanup() {
    for r in vk vkmemfd runc crun; do
        for id in b-run b-csd; do
            "$(case $r in vk*) echo "$VK" ;; *) echo "$r" ;; esac)" --root "$W/state-$r" delete --force "$id-$r" >/dev/null 2>&1 || true
        done
    done
    # runc also makes the group in the name=systemd and unified hierarchies.
    for c in memory pids cpu cpuacct cpuset blkio freezer devices systemd unified; do
        find "/sys/fs/cgroup/$c/virtkit-bench" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    rm -rf "$W"
}
trap cleanup EXIT

# The busybox rootfs: the host's busybox-static plus applet symlinks.
mkdir -p "$W/bundle/rootfs"/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$W/bundle/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$W/bundle/rootfs/bin/$a"
done

# One config per runtime (cgroupsPath differs), like `runc spec` with
# /bin/true and no terminal.
for r in vk vkmemfd runc crun; do
    mkdir -p "$W/b-$r"

    cat >"$W/b-$r/config.json" <<JSON
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"],
    "env": ["PATH=/bin"], "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "$W/bundle/rootfs", "readonly": true},
  "hostname": "bench",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
  ],
  "linux": {
    "cgroupsPath": "/virtkit-bench/$r",
    "resources": {"devices": [{"allow": false, "access": "rwm"}], "memory": {"limit": 268435456}, "pids": {"limit": 1024}},
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}
JSON
done

runtimes=(vk vkmemfd runc)
bins=("$VK" "env VIRTKIT_RUNC_SEAL=memfd $VK" "$RUNC")
if command -v crun >/dev/null; then
    if crun --root "$W/state-crun" run --bundle "$W/b-crun" probe-crun >/dev/null 2>"$W/crun.err"; then
        runtimes+=(crun); bins+=("$(command -v crun)")
    else
        echo "crun: skipped, it fails here: $(head -c 200 "$W/crun.err")"
    fi
else
    echo "crun: not installed (Debian 12's crun refuses hybrid cgroup hosts anyway)"
fi

cmds_run=(); cmds_csd=()
for i in "${!runtimes[@]}"; do
    r=${runtimes[$i]}; b=${bins[$i]}; s="$W/state-$r"
    cmds_run+=("$b --root $s run --bundle $W/b-$r b-run-$r")
    cmds_csd+=("$b --root $s create --bundle $W/b-$r b-csd-$r && $b --root $s start b-csd-$r && $b --root $s delete --force b-csd-$r")
done
# Sanity: each command works before timing it.
for c in "${cmds_run[@]}" "${cmds_csd[@]}"; do
    bash -c "$c" >/dev/null || { echo "failed: $c"; exit 1; }
done

nice hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$W/run.json" "${cmds_run[@]}" >/dev/null
nice hyperfine --warmup 3 --runs "$RUNS" --export-json "$W/csd.json" "${cmds_csd[@]}" >/dev/null

# Peak RSS of the runtime process during `run` (its longest-lived
# command): GNU time's maximum of the processes it forks and reaps
# (runtime, intermediate, container init), median of 5. Not Python's
# getrusage: a child's peak includes its spawner's pages before exec,
# so only a small spawner like time(1) measures the runtime.
python3 - "$W" "${runtimes[@]}" <<'PY'
import json, os, statistics, subprocess, sys
w, names = sys.argv[1], sys.argv[2:]
res = {k: json.load(open(f"{w}/{k}.json"))["results"] for k in ("run", "csd")}
run = [r["median"] * 1000 for r in res["run"]]
csd = [r["median"] * 1000 for r in res["csd"]]
label = {"vk": "virtkit-runc", "vkmemfd": "  (memfd copy)", "runc": "runc", "crun": "crun"}
rss = []
for i, n in enumerate(names):
    if not os.access("/usr/bin/time", os.X_OK):
        rss.append(float("nan"))
        continue
    cmd = ["/usr/bin/time", "-f", "%M"] + res["run"][i]["command"].split()
    runs = [int(subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               check=True).stderr.split()[-1]) for _ in range(5)]
    rss.append(statistics.median(runs))
if rss and rss[0] != rss[0]:
    print("peak RSS: n/a (needs GNU time: apt-get install time)")
r = names.index("runc")
print(f"{'runtime':<15} {'run /bin/true':>14} {'ratio':>6} {'create+start+delete':>20} {'ratio':>6} {'peak RSS':>10} {'ratio':>6}")
for i, n in enumerate(names):
    print(f"{label[n]:<15} {run[i]:>11.1f} ms {run[i]/run[r]:>6.2f} {csd[i]:>17.1f} ms {csd[i]/csd[r]:>6.2f}"
          f" {rss[i]:>6.0f} KiB {rss[i]/rss[r]:>6.2f}")
print(f"(medians of hyperfine runs; ratio = runtime / runc, below 1 is faster or smaller)")
PY
