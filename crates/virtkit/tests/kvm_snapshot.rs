//! Snapshots of x86-64 VMs through the control API and the command line:
//! `vm run --arch x86_64 --api-sock` with a network card, paused and
//! snapshotted through the API and stopped; `vm restore DIR` and an API
//! `snapshot/load` into a new `vm run --arch x86_64 --api-sock` each
//! continue the guest's serial output exactly where the pause cut it.
//! A snapshot of one architecture loaded into the other is refused by
//! name. `SendCtrlAltDel` reaches the guest's keyboard interrupt.

#[path = "../../x86-machine/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::api::ApiClient;

const COUNT: u64 = 300;

fn virtkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtkit"))
}

/// A VM process whose stdout is collected as it comes.
struct Vm {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Vm {
    fn spawn(args: &[&str]) -> Vm {
        let mut child = virtkit()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("virtkit runs");
        let mut stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Vm {
            child,
            out,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, what: &str) {
        let start = Instant::now();
        while !self.text().contains(what) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no {what:?} in {}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to end: (success, stdout, stderr).
    fn finish(mut self) -> (bool, String, String) {
        let st = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (st.success(), self.text(), err)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn client(sock: &Path) -> ApiClient {
    let start = Instant::now();
    loop {
        match ApiClient::connect(sock) {
            Ok(c) => return c,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(30), "{e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn x86_snapshots_through_the_api_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let guest = common::build_guest(
        dir.path(),
        "count",
        &common::counter_guest(COUNT, 5_000_000),
    );
    let g = guest.to_str().unwrap();
    let sock = dir.path().join("api.sock");
    let snap = dir.path().join("snap");
    std::fs::create_dir(&snap).unwrap();

    let mut a = Vm::spawn(&[
        "vm",
        "run",
        "--arch",
        "x86_64",
        "--kernel",
        g,
        "--mem",
        "16M",
        "--nic",
        "user",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    let mut c = client(&sock);
    a.wait_for("n=0000000000000003\n");
    c.pause().unwrap();
    c.snapshot_to_dir(&snap).unwrap();
    assert_eq!(c.instance_info().unwrap().state, vmm::api::VmState::Paused);
    // Ctrl-A x ends the paused VM: its output is exactly what it printed
    // before the pause.
    a.child.stdin.as_mut().unwrap().write_all(b"\x01x").unwrap();
    let (ok, before, err) = a.finish();
    assert!(ok, "{err}");
    let expected = common::counter_expected(COUNT);
    assert!(expected.starts_with(&before), "{before}");
    assert!(before.len() < expected.len());

    // `vm restore DIR` continues it.
    let b = Vm::spawn(&["vm", "restore", snap.to_str().unwrap()]);
    let (ok, after, err) = b.finish();
    assert!(ok, "{err}");
    assert_eq!(format!("{before}{after}"), expected, "{err}");

    // So does an API `snapshot/load` into a VM awaiting its configuration.
    let sock2 = dir.path().join("api2.sock");
    let v = Vm::spawn(&[
        "vm",
        "run",
        "--arch",
        "x86_64",
        "--api-sock",
        sock2.to_str().unwrap(),
    ]);
    client(&sock2).restore_from_dir(&snap, true).unwrap();
    let (ok, after, err) = v.finish();
    assert!(ok, "{err}");
    assert_eq!(format!("{before}{after}"), expected, "{err}");

    // The riscv64 board refuses the x86 snapshot by name.
    let sock3 = dir.path().join("api3.sock");
    let _rv = Vm::spawn(&["vm", "run", "--api-sock", sock3.to_str().unwrap()]);
    let e = client(&sock3)
        .restore_from_dir(&snap, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("x86_64-kvm"), "{e}");

    // And the x86 board a riscv64 one.
    let rvsnap = dir.path().join("rvsnap");
    std::fs::create_dir(&rvsnap).unwrap();
    let body = serde_json::json!({
        "version": 1,
        "machine": {"board": "riscv64-virt", "harts": 1, "mem_size": 16 << 20,
                    "builtin_sbi": true, "devices": [], "disk_sizes": []},
    });
    vmm::snapshot::write_state(&rvsnap.join(vmm::api::STATE_FILE), &body).unwrap();
    std::fs::write(rvsnap.join(vmm::api::MEMORY_FILE), vec![0u8; 16 << 20]).unwrap();
    let sock4 = dir.path().join("api4.sock");
    let _x = Vm::spawn(&[
        "vm",
        "run",
        "--arch",
        "x86_64",
        "--api-sock",
        sock4.to_str().unwrap(),
    ]);
    let e = client(&sock4)
        .restore_from_dir(&rvsnap, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("riscv64-virt"), "{e}");
    let out = virtkit()
        .args(["vm", "restore", rvsnap.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn an_x86_vm_is_configured_and_started_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let guest = common::build_guest(dir.path(), "count", &common::counter_guest(5, 1_000_000));
    let sock = dir.path().join("api.sock");
    let v = Vm::spawn(&[
        "vm",
        "run",
        "--arch",
        "x86_64",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    let mut c = client(&sock);
    let mut put = |path: &str, body: String| {
        let r = c.request("PUT", path, Some(&body)).unwrap();
        assert_eq!(
            r.status,
            204,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    };
    put(
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 16}"#.into(),
    );
    put(
        "/boot-source",
        format!(r#"{{"kernel_image_path": "{}"}}"#, guest.display()),
    );
    put(
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "virtkit_user_net": {}}"#.into(),
    );
    put("/actions", r#"{"action_type": "InstanceStart"}"#.into());
    let (ok, out, err) = v.finish();
    assert!(ok, "{err}");
    assert_eq!(out, common::counter_expected(5), "{err}");
}

/// `PUT /actions {"action_type": "SendCtrlAltDel"}` presses and releases
/// Ctrl+Alt+Del on the i8042: the guest reads the scancodes on IRQ 1,
/// prints them and resets, and virtkit exits 0.
#[test]
fn send_ctrl_alt_del_reaches_the_x86_keyboard() {
    let dir = tempfile::tempdir().unwrap();
    let guest = common::build_guest(dir.path(), "kbd", &common::keyboard_guest(8));
    let sock = dir.path().join("api.sock");
    let v = Vm::spawn(&[
        "vm",
        "run",
        "--arch",
        "x86_64",
        "--kernel",
        guest.to_str().unwrap(),
        "--mem",
        "16M",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    let mut c = client(&sock);
    v.wait_for("ready\n");
    let r = c
        .request(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#),
        )
        .unwrap();
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let (ok, out, err) = v.finish();
    assert!(ok, "{err}");
    assert_eq!(
        out,
        format!("ready\n{}", common::CTRL_ALT_DEL_LINES),
        "{err}"
    );
}
