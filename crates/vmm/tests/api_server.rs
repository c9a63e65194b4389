//! The control API server against a mock VM: driven by real clients
//! (`curl --unix-socket`, Python's `http.client` over AF_UNIX, raw
//! sockets for what those refuse to send) and by `ApiClient`.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm::api::{
    ApiClient, ApiError, ApiServer, ClientError, InitialState, ServerError, ServerOptions,
    SnapshotCreateParams, SnapshotLoadParams, VmConfig, VmController, VmState,
};

/// A VM that only records what it is asked to do. Its snapshot is its
/// configuration as JSON (state file) plus a marker (memory file), so a
/// load really depends on what create wrote.
#[derive(Clone, Default)]
struct MockVm {
    calls: Arc<Mutex<Vec<String>>>,
}

impl MockVm {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn log(&self, s: impl Into<String>) {
        self.calls.lock().unwrap().push(s.into());
    }
}

impl VmController for MockVm {
    fn check_config(&mut self, candidate: &VmConfig) -> Result<(), ApiError> {
        if candidate.machine_config.mem_size_mib > 4096 {
            return Err(ApiError::BadRequest("mock: at most 4096 MiB".into()));
        }
        Ok(())
    }
    fn start(&mut self, config: &VmConfig) -> Result<(), ApiError> {
        self.log(format!("start {}", config.machine_config.vcpu_count));
        Ok(())
    }
    fn pause(&mut self) -> Result<(), ApiError> {
        self.log("pause");
        Ok(())
    }
    fn resume(&mut self) -> Result<(), ApiError> {
        self.log("resume");
        Ok(())
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), ApiError> {
        self.log("ctrl-alt-del");
        Ok(())
    }
    fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> Result<(), ApiError> {
        self.log("snapshot");
        std::fs::write(&p.mem_file_path, b"memory")
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        std::fs::write(&p.snapshot_path, b"{}").map_err(|e| ApiError::BadRequest(e.to_string()))
    }
    fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<VmConfig, ApiError> {
        self.log("load");
        let state = std::fs::read(&p.snapshot_path).map_err(|e| {
            ApiError::BadRequest(format!("snapshot {}: {e}", p.snapshot_path.display()))
        })?;
        std::fs::read(&p.mem_backend.backend_path)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let _: serde_json::Value =
            serde_json::from_slice(&state).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(VmConfig::default())
    }
}

/// A mock controller that, unlike [`MockVm`], stores its configuration in
/// the snapshot, so a restore reports what was configured.
#[derive(Clone, Default)]
struct RecordingVm {
    inner: MockVm,
    config: Arc<Mutex<VmConfig>>,
}

impl VmController for RecordingVm {
    fn start(&mut self, config: &VmConfig) -> Result<(), ApiError> {
        *self.config.lock().unwrap() = config.clone();
        self.inner.start(config)
    }
    fn pause(&mut self) -> Result<(), ApiError> {
        self.inner.pause()
    }
    fn resume(&mut self) -> Result<(), ApiError> {
        self.inner.resume()
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), ApiError> {
        self.inner.send_ctrl_alt_del()
    }
    fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> Result<(), ApiError> {
        self.inner.create_snapshot(p)?;
        let json = serde_json::to_vec(&*self.config.lock().unwrap()).unwrap();
        std::fs::write(&p.snapshot_path, json).map_err(|e| ApiError::BadRequest(e.to_string()))
    }
    fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<VmConfig, ApiError> {
        self.inner.load_snapshot(p)?;
        let state = std::fs::read(&p.snapshot_path).unwrap();
        serde_json::from_slice(&state).map_err(|e| ApiError::BadRequest(e.to_string()))
    }
}

fn server(dir: &Path, vm: impl VmController + 'static) -> (ApiServer, PathBuf) {
    let sock = dir.join("api.sock");
    let server = ApiServer::start(&sock, vm, InitialState::AwaitingConfig).unwrap();
    (server, sock)
}

/// `curl --unix-socket`: returns (status, body).
fn curl(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(sock)
        .args(["-X", method, "-w", "\n%{http_code}"])
        .arg(format!("http://localhost{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = cmd
        .output()
        .expect("curl (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn fault(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    v["fault_message"].as_str().unwrap().to_string()
}

/// Sends raw bytes, returns everything the server answers until it
/// closes the connection (or 20 s pass, so a bug cannot hang the test).
fn raw(sock: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn curl_configures_starts_pauses_snapshots_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let vm = MockVm::default();
    let (_server, sock) = server(dir.path(), vm.clone());
    let kernel = dir.path().join("Image");
    let disk = dir.path().join("disk.img");
    std::fs::write(&kernel, b"kernel").unwrap();
    std::fs::write(&disk, b"disk").unwrap();

    let (code, body) = curl(&sock, "GET", "/", None);
    assert_eq!(code, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "virtkit");
    assert_eq!(info["id"], "anonymous-instance");

    let steps: &[(&str, &str, String)] = &[
        ("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#.into()),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#, kernel.display()),
        ),
        (
            "PUT",
            "/drives/rootfs",
            format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": false}}"#,
                disk.display()
            ),
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "guest_mac": "06:00:ac:10:00:02", "virtkit_user_net": {"hostfwd": ["tcp:127.0.0.1:2222-:22"]}}"#.into(),
        ),
        ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#.into()),
        ("PATCH", "/vm", r#"{"state": "Paused"}"#.into()),
        (
            "PUT",
            "/snapshot/create",
            format!(
                r#"{{"snapshot_type": "Full", "snapshot_path": "{0}/state", "mem_file_path": "{0}/memory"}}"#,
                dir.path().display()
            ),
        ),
        ("PATCH", "/vm", r#"{"state": "Resumed"}"#.into()),
        ("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#.into()),
    ];
    for (method, path, body) in steps {
        let (code, resp) = curl(&sock, method, path, Some(body));
        assert_eq!(code, 204, "{method} {path}: {resp}");
        assert!(resp.is_empty(), "{resp}");
    }
    assert_eq!(
        vm.calls(),
        ["start 2", "pause", "snapshot", "resume", "ctrl-alt-del"]
    );
    assert!(dir.path().join("memory").exists());

    let (code, body) = curl(&sock, "GET", "/vm/config", None);
    assert_eq!(code, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["machine-config"]["vcpu_count"], 2);
    assert_eq!(config["machine-config"]["mem_size_mib"], 256);
    assert_eq!(config["boot-source"]["boot_args"], "console=ttyS0");
    assert_eq!(config["drives"][0]["drive_id"], "rootfs");
    assert_eq!(config["network-interfaces"][0]["iface_id"], "eth0");
    assert_eq!(
        config["network-interfaces"][0]["virtkit_user_net"]["hostfwd"][0],
        "tcp:127.0.0.1:2222-:22"
    );
    let (code, body) = curl(&sock, "GET", "/machine-config", None);
    assert_eq!(
        (code, body.contains("\"mem_size_mib\":256")),
        (200, true),
        "{body}"
    );
    let (_, body) = curl(&sock, "GET", "/", None);
    assert!(body.contains("\"state\":\"Running\""), "{body}");
}

#[test]
fn out_of_order_requests_get_400_with_firecrackers_messages() {
    let dir = tempfile::tempdir().unwrap();
    let vm = MockVm::default();
    let (_server, sock) = server(dir.path(), vm.clone());
    let kernel = dir.path().join("Image");
    std::fs::write(&kernel, b"kernel").unwrap();
    let snap = format!(
        r#"{{"snapshot_path": "{0}/s", "mem_file_path": "{0}/m"}}"#,
        dir.path().display()
    );
    let pre_boot = "The requested operation is not supported before starting the microVM.";
    let post_boot = "The requested operation is not supported after starting the microVM.";

    // Before start.
    let (code, body) = curl(&sock, "PUT", "/snapshot/create", Some(&snap));
    assert_eq!((code, fault(&body).as_str()), (400, pre_boot));
    let (code, body) = curl(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!((code, fault(&body).as_str()), (400, pre_boot));
    let (code, body) = curl(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(
        (code, fault(&body).as_str()),
        (400, "Cannot start microvm without kernel configuration.")
    );
    let (code, body) = curl(
        &sock,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent/Image"}"#),
    );
    assert_eq!(code, 400);
    assert!(
        fault(&body).contains("kernel_image_path /nonexistent/Image"),
        "{body}"
    );
    // A FIFO would block an ordinary open until a writer comes: refused
    // at once instead, as is a directory.
    let fifo = dir.path().join("fifo");
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    for bad in [&fifo, &dir.path().to_path_buf()] {
        let body = format!(r#"{{"kernel_image_path": "{}"}}"#, bad.display());
        let (code, resp) = curl(&sock, "PUT", "/boot-source", Some(&body));
        assert_eq!(code, 400);
        assert!(fault(&resp).contains("not a regular file"), "{resp}");
    }
    let (code, body) = curl(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 8192}"#),
    );
    assert_eq!(
        (code, fault(&body).as_str()),
        (400, "mock: at most 4096 MiB")
    );
    let (code, body) = curl(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    assert_eq!(code, 400);
    assert!(fault(&body).contains("not supported"), "{body}");

    // PATCH /machine-config changes only the fields it names.
    let (code, body) = curl(
        &sock,
        "PATCH",
        "/machine-config",
        Some(r#"{"mem_size_mib": 300}"#),
    );
    assert_eq!(code, 204, "{body}");
    let (_, body) = curl(&sock, "GET", "/machine-config", None);
    let mc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(1), Some(300))
    );
    let (code, body) = curl(
        &sock,
        "PATCH",
        "/machine-config",
        Some(r#"{"vcpu_count": 0}"#),
    );
    assert_eq!(code, 400);
    assert!(fault(&body).contains("vCPU number is invalid"), "{body}");
    let (code, body) = curl(&sock, "PATCH", "/machine-config", Some(r#"{"cpus": 2}"#));
    assert_eq!(code, 400);
    assert!(fault(&body).contains("unknown field `cpus`"), "{body}");

    // Configured: a snapshot can no longer be loaded.
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(curl(&sock, "PUT", "/boot-source", Some(&boot)).0, 204);
    let (code, body) = curl(&sock, "PUT", "/snapshot/load", Some(&snap));
    assert_eq!(
        (code, fault(&body).as_str()),
        (
            400,
            "Loading a microVM snapshot not allowed after configuring boot-specific resources."
        )
    );

    // Started: no pre-boot configuration, no second start, no load, no
    // snapshot of a running VM.
    assert_eq!(
        curl(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        )
        .0,
        204
    );
    for (method, path, body) in [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#.to_string(),
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"mem_size_mib": 64}"#.to_string(),
        ),
        ("PUT", "/boot-source", boot.clone()),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.to_string(),
        ),
        ("PUT", "/snapshot/load", snap.clone()),
        (
            "PUT",
            "/drives/d",
            r#"{"drive_id": "d", "path_on_host": "/x", "is_root_device": false}"#.to_string(),
        ),
    ] {
        let (code, resp) = curl(&sock, method, path, Some(&body));
        assert_eq!(
            (code, fault(&resp).as_str()),
            (400, post_boot),
            "{method} {path}"
        );
    }
    let (code, body) = curl(&sock, "PUT", "/snapshot/create", Some(&snap));
    assert_eq!(code, 400);
    assert!(fault(&body).contains("pause it first"), "{body}");
    assert_eq!(vm.calls(), ["start 1"]);
}

#[test]
fn malformed_unknown_and_oversized_requests_get_400() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = server(dir.path(), MockVm::default());

    let (code, body) = curl(&sock, "GET", "/nope", None);
    assert_eq!(
        (code, fault(&body).as_str()),
        (400, "Invalid request method and/or path: GET /nope.")
    );
    let (code, body) = curl(&sock, "DELETE", "/vm", None);
    assert_eq!(
        (code, fault(&body).as_str()),
        (400, "Invalid request method and/or path: DELETE /vm.")
    );
    let (code, body) = curl(
        &sock,
        "PATCH",
        "/vm",
        Some(r#"{"state": "Paused", "force": true}"#),
    );
    assert_eq!(code, 400);
    assert!(fault(&body).contains("unknown field `force`"), "{body}");
    let (code, body) = curl(&sock, "PUT", "/machine-config", Some("{\"vcpu_count\": 1,"));
    assert_eq!(code, 400);
    assert!(
        fault(&body).starts_with("An error occurred when deserializing the json body"),
        "{body}"
    );
    let (code, body) = curl(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 0, "mem_size_mib": 64}"#),
    );
    assert_eq!(code, 400);
    assert!(fault(&body).contains("vCPU number is invalid"), "{body}");

    // Raw bytes curl would not send.
    let out = raw(&sock, b"HELLO\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(out.contains("Invalid request line"), "{out}");
    let out = raw(&sock, b"GET / HTTP/1.1\r\nbad header\r\n\r\n");
    assert!(
        out.starts_with("HTTP/1.1 400 ") && out.contains("Invalid header line"),
        "{out}"
    );
    let out = raw(
        &sock,
        b"PUT /actions HTTP/1.1\r\nContent-Length: 100000\r\n\r\n{",
    );
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(out.contains("larger than the limit of 65536"), "{out}");
    let out = raw(
        &sock,
        b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(
        out.starts_with("HTTP/1.1 400 ") && out.contains("Content-Length"),
        "{out}"
    );
    let mut huge = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(20_000, b'a');
    let out = raw(&sock, &huge);
    assert!(
        out.starts_with("HTTP/1.1 400 ") && out.contains("headers are larger"),
        "{out}"
    );
    let out = raw(&sock, &[0xff; 64]);
    assert!(
        out.starts_with("HTTP/1.1 400 ") && out.contains("Invalid request line"),
        "{out}"
    );
    // The server still serves after all that.
    assert_eq!(curl(&sock, "GET", "/", None).0, 200);
}

#[test]
fn keep_alive_pipelining_and_100_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = server(dir.path(), MockVm::default());
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // Two requests in one write, answered in order on one connection.
    s.write_all(b"GET / HTTP/1.1\r\n\r\nGET /machine-config HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("HTTP/1.1 200").count() < 2 || !got.contains("vcpu_count") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // Expect: 100-continue: the body follows the interim response.
    let body = br#"{"vcpu_count": 3, "mem_size_mib": 64}"#;
    write!(
        s,
        "PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body).unwrap();
    let n = s.read(&mut buf).unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("HTTP/1.1 204 No Content\r\n"), "{resp}");
}

#[test]
fn silent_and_slow_clients_do_not_block_others() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let options = ServerOptions {
        request_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let _server = ApiServer::start_with(
        &sock,
        MockVm::default(),
        InitialState::AwaitingConfig,
        options,
    )
    .unwrap();
    // One client connects and says nothing; another sends half a request.
    let _silent = UnixStream::connect(&sock).unwrap();
    let mut slow = UnixStream::connect(&sock).unwrap();
    slow.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Le")
        .unwrap();
    // Others are served meanwhile.
    for _ in 0..3 {
        assert_eq!(curl(&sock, "GET", "/", None).0, 200);
    }
    // The slow one is answered 408 and closed once its time is up.
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = String::new();
    slow.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    // More connections than the server keeps: the oldest idle ones go.
    let idle: Vec<UnixStream> = (0..vmm::api::MAX_CONNECTIONS + 4)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    assert_eq!(curl(&sock, "GET", "/", None).0, 200);
    drop(idle);
}

#[test]
fn socket_is_private_replaces_a_stale_one_and_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    // A stale socket: bound, its listener gone.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(std::fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_socket());
    let server = ApiServer::start(&sock, MockVm::default(), InitialState::AwaitingConfig).unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(curl(&sock, "GET", "/", None).0, 200);
    // A live one is not taken over.
    let err = ApiServer::start(&sock, MockVm::default(), InitialState::AwaitingConfig)
        .err()
        .unwrap();
    assert!(matches!(err, ServerError::InUse(_)), "{err}");
    drop(server);
    assert!(!sock.exists());
    // A regular file is never replaced.
    std::fs::write(&sock, b"data").unwrap();
    let err = ApiServer::start(&sock, MockVm::default(), InitialState::AwaitingConfig)
        .err()
        .unwrap();
    assert!(matches!(err, ServerError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"data");
    // No temporary directories left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["api.sock"]);
}

#[test]
fn client_snapshot_pauses_and_resumes_a_running_vm_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let vm = MockVm::default();
    let config = VmConfig::default();
    let sock = dir.path().join("api.sock");
    let server = ApiServer::start(&sock, vm.clone(), InitialState::Running(config)).unwrap();
    let mut client = ApiClient::connect(&sock).unwrap();
    assert_eq!(client.instance_info().unwrap().state, VmState::Running);
    let snap = dir.path().join("snap");
    assert_eq!(client.snapshot_to_dir(&snap).unwrap(), VmState::Running);
    assert_eq!(vm.calls(), ["pause", "snapshot", "resume"]);
    assert!(snap.join("state").exists() && snap.join("memory").exists());
    assert_eq!(client.instance_info().unwrap().state, VmState::Running);
    // A paused VM stays paused.
    client.pause().unwrap();
    assert_eq!(client.snapshot_to_dir(&snap).unwrap(), VmState::Paused);
    assert_eq!(client.instance_info().unwrap().state, VmState::Paused);
    // Errors carry the server's message.
    let err = client.restore_from_dir(&snap, true).unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 400, message, .. } if message.contains("after starting")),
        "{err}"
    );
    drop(server);

    // A fresh VM restores from the directory, running.
    let vm2 = MockVm::default();
    let _server2 = ApiServer::start(&sock, vm2.clone(), InitialState::AwaitingConfig).unwrap();
    let mut client = ApiClient::connect(&sock).unwrap();
    let err = client.snapshot_to_dir(&snap).unwrap_err();
    assert!(matches!(err, ClientError::NotStarted), "{err}");
    let err = client
        .restore_from_dir(&dir.path().join("missing"), true)
        .unwrap_err();
    assert!(err.to_string().contains("missing/state"), "{err}");
    client.restore_from_dir(&snap, true).unwrap();
    assert_eq!(vm2.calls(), ["load", "load", "resume"]);
    assert_eq!(client.instance_info().unwrap().state, VmState::Running);
    // Nothing listens any more: a clear error.
    let err = ApiClient::connect(dir.path().join("none.sock"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("none.sock"), "{err}");
}

const PYTHON_CYCLE: &str = r#"
import http.client, json, socket, sys

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=20)
        self.unix_path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(self.unix_path)

def call(conn, method, path, body=None):
    data = None if body is None else json.dumps(body)
    headers = {} if body is None else {"Content-Type": "application/json"}
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    return resp.status, (json.loads(raw) if raw else None)

def ok(conn, method, path, body=None):
    status, reply = call(conn, method, path, body)
    assert status in (200, 204), (method, path, status, reply)
    return reply

first, second, workdir, kernel = sys.argv[1:5]
c = UnixHTTPConnection(first)  # one keep-alive connection for the whole cycle
assert ok(c, "GET", "/")["state"] == "Not started"
ok(c, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 512})
ok(c, "PUT", "/boot-source", {"kernel_image_path": kernel, "boot_args": "console=hvc0"})
ok(c, "PUT", "/actions", {"action_type": "InstanceStart"})
assert ok(c, "GET", "/")["state"] == "Running"
status, reply = call(c, "PUT", "/snapshot/create", {"snapshot_path": workdir + "/s", "mem_file_path": workdir + "/m"})
assert status == 400 and "pause it first" in reply["fault_message"], reply
ok(c, "PATCH", "/vm", {"state": "Paused"})
assert ok(c, "GET", "/")["state"] == "Paused"
ok(c, "PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": workdir + "/s", "mem_file_path": workdir + "/m"})
ok(c, "PATCH", "/vm", {"state": "Resumed"})

r = UnixHTTPConnection(second)
status, reply = call(r, "PUT", "/snapshot/load", {"snapshot_path": workdir + "/s"})
assert status == 400 and "mem_backend" in reply["fault_message"], reply
ok(r, "PUT", "/snapshot/load", {"snapshot_path": workdir + "/s", "mem_backend": {"backend_type": "File", "backend_path": workdir + "/m"}, "resume_vm": False})
assert ok(r, "GET", "/")["state"] == "Paused"
ok(r, "PATCH", "/vm", {"state": "Resumed"})
assert ok(r, "GET", "/")["state"] == "Running"
config = ok(r, "GET", "/vm/config")
assert config["machine-config"]["vcpu_count"] == 2, config
assert config["boot-source"]["boot_args"] == "console=hvc0", config
print("cycle ok")
"#;

#[test]
fn python_client_drives_a_configure_start_pause_snapshot_restore_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("Image");
    std::fs::write(&kernel, b"kernel").unwrap();
    let first = RecordingVm::default();
    let second = RecordingVm::default();
    let sock1 = dir.path().join("one.sock");
    let sock2 = dir.path().join("two.sock");
    let _s1 = ApiServer::start(&sock1, first.clone(), InitialState::AwaitingConfig).unwrap();
    let _s2 = ApiServer::start(&sock2, second.clone(), InitialState::AwaitingConfig).unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_CYCLE)
        .arg(&sock1)
        .arg(&sock2)
        .arg(dir.path())
        .arg(&kernel)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cycle ok");
    assert_eq!(
        first.inner.calls(),
        ["start 2", "pause", "snapshot", "resume"]
    );
    assert_eq!(second.inner.calls(), ["load", "resume"]);
}
