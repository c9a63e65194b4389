#!/usr/bin/env bash
# virtkit-runc against runc, side by side in one run (hyperfine medians):
#   run                 `run` of /bin/true in a busybox bundle
#   create+start+delete the same container through the three commands
# and the peak RSS of the runtime process (getrusage of the children).
# crun is tried if installed (it refuses this host's hybrid cgroups).
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
    for r in vk runc crun; do
        for id in b-run b-csd; do
            "$([ $r = vk ] && echo "$VK" || echo "$r")" --root "$W/state-$r" delete --force "$id-$r" >/dev/null 2>&1 || true
        done
    done
    for c in memory pids cpu cpuacct cpuset blkio freezer devices; do
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
for r in vk runc crun; do
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

runtimes=(vk runc)
bins=("$VK" "$RUNC")
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

# Peak RSS of the runtime process (`run`, the longest-lived one).
python3 - "$W" "${runtimes[@]}" <<'PY'
import json, resource, subprocess, sys
w, names = sys.argv[1], sys.argv[2:]
def med(path):
    return [r["median"] * 1000 for r in json.load(open(path))["results"]]
run, csd = med(f"{w}/run.json"), med(f"{w}/csd.json")
label = {"vk": "virtkit-runc", "runc": "runc", "crun": "crun"}
rss = []
for n in names:
    # A fresh interpreter per runtime so RUSAGE_CHILDREN sees only it.
    b = {"vk": None}.get(n)
    code = ("import resource,subprocess,sys;"
            "subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,check=True);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cmd = json.load(open(f"{w}/run.json"))["results"][names.index(n)]["command"].split()
    out = subprocess.run([sys.executable, "-c", code] + cmd, capture_output=True, text=True, check=True)
    rss.append(int(out.stdout.strip()))
print(f"{'runtime':<14} {'run /bin/true (ms)':>19} {'create+start+delete (ms)':>25} {'peak RSS (KiB)':>15}")
for i, n in enumerate(names):
    print(f"{label[n]:<14} {run[i]:>19.1f} {csd[i]:>25.1f} {rss[i]:>15}")
r = names.index("runc")
print(f"{'ratio vk/runc':<14} {run[0]/run[r]:>19.2f} {csd[0]/csd[r]:>25.2f} {rss[0]/rss[r]:>15.2f}")
PY
