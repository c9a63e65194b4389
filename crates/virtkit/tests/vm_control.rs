//! The control API and snapshots as a user drives them, on Debian's riscv64
//! guest: `virtkit vm run --api-sock` configured, started, paused and
//! snapshotted by a Python client (standard library only) and by curl,
//! then a second, empty VM loads the snapshot and continues the guest's
//! work; `virtkit vm snapshot` / `vm restore`; and `virtkit run` restored
//! from its snapshot against `--cold`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const VIRTKIT: &str = env!("CARGO_BIN_EXE_virtkit");

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vk-control-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn virtkit(args: &[&str]) -> Output {
    Command::new(VIRTKIT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn guest_path(what: &str) -> String {
    let o = virtkit(&["guest", "path", what]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// The guest's console, read line by line on a thread (lines end in CR LF
/// on the serial console).
struct Console {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Console {
    fn new(out: impl Read + Send + 'static) -> Console {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l.trim_end_matches('\r').to_string()).is_err() {
                    break;
                }
            }
        });
        Console {
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line equal to `want` (the limit is a hang guard).
    fn wait_for(&mut self, want: &str) {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(300)) {
                Ok(l) => {
                    let done = l == want;
                    self.seen.push(l);
                    if done {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line {want:?} from the guest; it printed {:?}",
                    self.seen
                ),
            }
        }
    }
}

fn spawn_vm(args: &[&str]) -> (Child, Console) {
    let mut c = Command::new(VIRTKIT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    (c, Console::new(out))
}

fn wait_socket(p: &Path) {
    for _ in 0..500 {
        if p.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} never appeared", p.display());
}

/// A Python client over the API socket (standard library only):
/// `python3 - SOCK METHOD PATH [BODY]...` sends each request in turn on
/// one connection and prints `STATUS BODY` per request.
const PY_CLIENT: &str = r#"
import http.client, socket, sys
class UnixConn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)
c = UnixConn(sys.argv[1])
args = sys.argv[2:]
while args:
    method, path, body = args[0], args[1], args[2]
    args = args[3:]
    headers = {"Content-Type": "application/json"} if body else {}
    c.request(method, path, body=body or None, headers=headers)
    r = c.getresponse()
    print(r.status, r.read().decode())
"#;

/// Runs the Python client; returns one `STATUS BODY` line per request.
fn python(sock: &Path, requests: &[(&str, &str, &str)]) -> Vec<String> {
    let mut cmd = Command::new("python3");
    cmd.arg("-").arg(sock);
    for (m, p, b) in requests {
        cmd.args([m, p, b]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PY_CLIENT.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn curl(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", method, "--unix-socket"])
        .arg(sock)
        .arg(format!("http://localhost{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let o = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

#[test]
fn api_configure_start_pause_snapshot_then_load_into_a_new_vm() {
    let dir = tmpdir("api");
    let kernel = guest_path("kernel");
    let initrd = dir.join("run.cpio");
    // The guest announces itself, then waits for a line: the snapshot is
    // taken while it waits, and the restored copy gets the line.
    let o = virtkit(&[
        "guest",
        "initramfs",
        "-o",
        initrd.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo guest-ready; read x; echo \"got $x\"; exit 3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let sock1 = dir.join("api1.sock");
    let (mut vm1, mut con1) = spawn_vm(&["vm", "run", "--api-sock", sock1.to_str().unwrap()]);
    wait_socket(&sock1);
    let boot = format!(
        r#"{{"kernel_image_path": "{kernel}", "initrd_path": "{}", "boot_args": "console=ttyS0 quiet"}}"#,
        initrd.display()
    );
    let state = dir.join("state");
    let memory = dir.join("memory");
    // Out of order first: no snapshot of a VM that has not started.
    let replies = python(
        &sock1,
        &[
            ("GET", "/", ""),
            (
                "PUT",
                "/snapshot/create",
                &format!(
                    r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
                    state.display(),
                    memory.display()
                ),
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
            ),
            ("PUT", "/boot-source", &boot),
            ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        ],
    );
    assert!(
        replies[0].starts_with("200 ") && replies[0].contains("Not started"),
        "{replies:?}"
    );
    assert!(
        replies[1].starts_with("400 ") && replies[1].contains("fault_message"),
        "{replies:?}"
    );
    assert_eq!(&replies[2..], ["204 ", "204 ", "204 "], "{replies:?}");
    con1.wait_for("guest-ready");

    // Configuration after the start is refused; pause, snapshot, resume.
    let (code, body) = curl(&sock1, "PUT", "/boot-source", Some(&boot));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not supported after starting"), "{body}");
    let replies = python(
        &sock1,
        &[
            ("PATCH", "/vm", r#"{"state": "Paused"}"#),
            ("GET", "/", ""),
            (
                "PUT",
                "/snapshot/create",
                &format!(
                    r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
                    state.display(),
                    memory.display()
                ),
            ),
            ("GET", "/vm/config", ""),
        ],
    );
    assert_eq!(replies[0], "204 ", "{replies:?}");
    assert!(replies[1].contains(r#""state":"Paused""#), "{replies:?}");
    assert_eq!(replies[2], "204 ", "{replies:?}");
    assert!(replies[3].contains(r#""vcpu_count":2"#), "{replies:?}");
    assert_eq!(
        curl(&sock1, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
        204
    );
    // The original goes on: it gets its line and exits with 3.
    vm1.stdin.take().unwrap().write_all(b"first\n").unwrap();
    con1.wait_for("got first");
    assert_eq!(vm1.wait().unwrap().code(), Some(3));

    // A new, empty VM loads the snapshot (Firecracker's request) and
    // continues from the read.
    let sock2 = dir.join("api2.sock");
    let (mut vm2, mut con2) = spawn_vm(&["vm", "run", "--api-sock", sock2.to_str().unwrap()]);
    wait_socket(&sock2);
    let (code, body) = curl(
        &sock2,
        "PUT",
        "/snapshot/load",
        Some(&format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
            state.display(),
            memory.display()
        )),
    );
    assert_eq!(code, 204, "{body}");
    let (code, body) = curl(&sock2, "GET", "/", None);
    assert_eq!(code, 200);
    assert!(body.contains(r#""state":"Running""#), "{body}");
    // Load after load: refused.
    let (code, _) = curl(
        &sock2,
        "PUT",
        "/snapshot/load",
        Some(&format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            state.display(),
            memory.display()
        )),
    );
    assert_eq!(code, 400);
    vm2.stdin.take().unwrap().write_all(b"second\n").unwrap();
    con2.wait_for("got second");
    assert_eq!(vm2.wait().unwrap().code(), Some(3));

    // The same snapshot through the command line: vm restore.
    let snapdir = dir.join("snap");
    std::fs::create_dir_all(&snapdir).unwrap();
    std::fs::rename(&state, snapdir.join("state")).unwrap();
    std::fs::rename(&memory, snapdir.join("memory")).unwrap();
    let (mut vm3, mut con3) = spawn_vm(&["vm", "restore", snapdir.to_str().unwrap()]);
    vm3.stdin.take().unwrap().write_all(b"third\n").unwrap();
    con3.wait_for("got third");
    assert_eq!(vm3.wait().unwrap().code(), Some(3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_snapshots_and_requests_get_clear_errors() {
    let dir = tmpdir("bad");
    // vm restore of nothing, of garbage.
    let o = virtkit(&["vm", "restore", dir.join("none").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("none/state"), "{err}");
    std::fs::write(dir.join("state"), b"VKSNAP\r\ngarbage").unwrap();
    std::fs::write(dir.join("memory"), b"").unwrap();
    let o = virtkit(&["vm", "restore", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("state"), "{err}");
    // A client with no VM behind the socket.
    let o = virtkit(&[
        "vm",
        "state",
        "--api-sock",
        dir.join("nosock").to_str().unwrap(),
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nosock"));
    // vm run with neither a kernel nor an API socket.
    let o = virtkit(&["vm", "run"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--kernel is required"));
    // An API-configured VM: malformed and unknown requests, a missing
    // kernel, then InstanceStart without a boot source.
    let sock = dir.join("api.sock");
    let (mut vm, _con) = spawn_vm(&["vm", "run", "--api-sock", sock.to_str().unwrap()]);
    wait_socket(&sock);
    let (code, body) = curl(&sock, "PUT", "/machine-config", Some("{not json"));
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 64, "bogus": 1}"#),
    );
    assert_eq!(code, 400, "{body}");
    let (code, _) = curl(&sock, "GET", "/no/such/path", None);
    assert_eq!(code, 400);
    let (code, body) = curl(
        &sock,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent/kernel"}"#),
    );
    assert_eq!(code, 400);
    assert!(body.contains("/nonexistent/kernel"), "{body}");
    let (code, body) = curl(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(code, 400, "{body}");
    // A snapshot/load of a damaged file: 400, and the VM can still be used.
    std::fs::write(dir.join("state"), b"not a snapshot").unwrap();
    let (code, body) = curl(
        &sock,
        "PUT",
        "/snapshot/load",
        Some(&format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            dir.join("state").display(),
            dir.join("memory").display()
        )),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(&sock, "GET", "/", None);
    assert_eq!(code, 200);
    assert!(body.contains("Not started"), "{body}");
    vm.kill().unwrap();
    let _ = vm.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `virtkit run` output without the terminal's carriage returns.
fn run(args: &[&str], stdin: &[u8]) -> (Option<i32>, String, String) {
    let mut c = Command::new(VIRTKIT)
        .arg("run")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = c.wait_with_output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).replace('\r', ""),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn run_restored_matches_a_cold_boot() {
    // One command that covers the kernel, the harts, the CPU description
    // and a pipeline on stdin.
    let script = "uname -a; nproc; cat /proc/cpuinfo; read a; read b; echo \"$b $a\" | tr a-z A-Z; ls /sys/class/net";
    let input = b"first line\nsecond line\n";
    for cpus in ["1", "2"] {
        // The first restored run of a shape may build its snapshot (and
        // say so on stderr); the second certainly restores.
        let _ = run(&["--cpus", cpus, "--", "true"], b"");
        let (code_r, out_r, err_r) = run(&["--cpus", cpus, "--", "sh", "-c", script], input);
        let (code_c, out_c, err_c) =
            run(&["--cold", "--cpus", cpus, "--", "sh", "-c", script], input);
        assert_eq!((code_r, code_c), (Some(0), Some(0)), "{err_r}\n{err_c}");
        assert!(
            !err_r.contains("booting"),
            "the run did not restore: {err_r}"
        );
        // The input lines are echoed by the guest's terminal in both.
        assert_eq!(out_r, out_c, "restored:\n{out_r}\ncold:\n{out_c}");
        assert!(out_r.contains("SECOND LINE FIRST LINE"), "{out_r}");
        assert!(out_r.contains(&format!("\n{cpus}\n")), "{out_r}");
    }
    let (code, _, err) = run(&["--", "sh", "-c", "exit 7"], b"");
    assert_eq!(code, Some(7), "{err}");
    // Clones of one snapshot do not share random numbers.
    let a = run(
        &["--", "sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"],
        b"",
    );
    let b = run(
        &["--", "sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"],
        b"",
    );
    assert_eq!((a.0, b.0), (Some(0), Some(0)));
    assert_ne!(a.1, b.1, "two restored runs read the same random bytes");
}

/// `virtkit run --disk` restores too: the snapshot holds an empty drive
/// (read-write or read-only) and the run's disk goes into it, of whatever
/// size and format. Written data reaches the image; a read-only disk
/// stays untouched.
#[test]
fn run_restored_with_a_disk() {
    let dir = tmpdir("rundisk");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("hello.txt"), "hello from the host\n").unwrap();
    let mkfs = |img: &Path, size: &str| {
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&files)
            .arg(img)
            .arg(size)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let raw = dir.join("a.img");
    mkfs(&raw, "16M");
    let big = dir.join("b.img");
    mkfs(&big, "48M");
    let qcow = dir.join("b.qcow2");
    let o = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .args([&big, &qcow])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let script = "cat /mnt/hello.txt; cat /sys/block/vda/size; echo written > /mnt/out.txt";
    let raw_s = raw.to_str().unwrap();
    // The first run of the shape may build its snapshot; the others restore.
    let _ = run(&["--disk", raw_s, "--", "true"], b"");
    let (code, out, err) = run(&["--disk", raw_s, "--", "sh", "-c", script], b"");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!err.contains("booting"), "the run did not restore: {err}");
    assert!(out.contains("hello from the host\n32768\n"), "{out}\n{err}");
    let o = Command::new("debugfs")
        .args(["-R", "cat out.txt"])
        .arg(&raw)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "written\n");

    // Another size and format in the same kind of drive, restored too.
    let qcow_s = qcow.to_str().unwrap();
    let (code, out, err) = run(&["--disk", qcow_s, "--", "sh", "-c", script], b"");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!err.contains("booting"), "the run did not restore: {err}");
    assert!(out.contains("hello from the host\n98304\n"), "{out}\n{err}");
    let o = Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&qcow)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Read-only: its own snapshot (the guest's driver learns read-only
    // when it probes); writes fail in the guest, the image is unchanged.
    let ro = format!("{raw_s},ro");
    let before = std::fs::read(&raw).unwrap();
    let _ = run(&["--disk", &ro, "--", "true"], b"");
    let (code, out, err) = run(
        &[
            "--disk",
            &ro,
            "--",
            "sh",
            "-c",
            "cat /mnt/out.txt; cat /sys/block/vda/ro; touch /mnt/x",
        ],
        b"",
    );
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(!err.contains("booting"), "the run did not restore: {err}");
    assert!(out.contains("written\n1\n"), "{out}\n{err}");
    assert!(out.contains("Read-only file system"), "{out}\n{err}");
    assert!(
        std::fs::read(&raw).unwrap() == before,
        "a read-only disk changed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
