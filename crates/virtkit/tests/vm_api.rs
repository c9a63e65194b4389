//! The command-line clients of the control API (`virtkit vm state|pause|
//! resume|snapshot`, the API part of `vm restore`) against an API server
//! over a mock VM: no machine needed.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtkit::api_client::{self, SnapshotArgs, SockArgs};
use vmm::api::{
    ApiError, ApiServer, InitialState, SnapshotCreateParams, SnapshotLoadParams, VmConfig,
    VmController, VmState,
};

#[derive(Clone, Default)]
struct MockVm {
    calls: Arc<Mutex<Vec<&'static str>>>,
}

impl MockVm {
    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
}

impl VmController for MockVm {
    fn start(&mut self, _: &VmConfig) -> Result<(), ApiError> {
        self.calls.lock().unwrap().push("start");
        Ok(())
    }
    fn pause(&mut self) -> Result<(), ApiError> {
        self.calls.lock().unwrap().push("pause");
        Ok(())
    }
    fn resume(&mut self) -> Result<(), ApiError> {
        self.calls.lock().unwrap().push("resume");
        Ok(())
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), ApiError> {
        Ok(())
    }
    fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> Result<(), ApiError> {
        self.calls.lock().unwrap().push("snapshot");
        std::fs::write(&p.snapshot_path, b"state").unwrap();
        std::fs::write(&p.mem_file_path, b"memory").unwrap();
        Ok(())
    }
    fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<VmConfig, ApiError> {
        self.calls.lock().unwrap().push("load");
        for f in [&p.snapshot_path, &p.mem_backend.backend_path] {
            std::fs::metadata(f)
                .map_err(|e| ApiError::BadRequest(format!("{}: {e}", f.display())))?;
        }
        Ok(VmConfig::default())
    }
}

fn sock_args(sock: &Path) -> SockArgs {
    SockArgs {
        api_sock: sock.to_path_buf(),
    }
}

#[test]
fn state_pause_resume_and_snapshot_of_a_running_vm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let vm = MockVm::default();
    let _server = ApiServer::start(
        &sock,
        vm.clone(),
        InitialState::Running(VmConfig::default()),
    )
    .unwrap();
    assert_eq!(api_client::query_state(&sock).unwrap(), VmState::Running);
    assert_eq!(api_client::pause(&sock_args(&sock)).unwrap(), 0);
    assert_eq!(api_client::query_state(&sock).unwrap(), VmState::Paused);
    assert_eq!(api_client::resume(&sock_args(&sock)).unwrap(), 0);
    assert_eq!(api_client::state(&sock_args(&sock)).unwrap(), 0);

    // `vm snapshot` of a running VM: paused for the snapshot, running after.
    let snap = dir.path().join("snaps/one");
    let args = SnapshotArgs {
        api_sock: sock.clone(),
        dir: snap.clone(),
    };
    assert_eq!(api_client::snapshot(&args).unwrap(), 0);
    assert_eq!(
        vm.calls(),
        ["pause", "resume", "pause", "snapshot", "resume"]
    );
    assert_eq!(std::fs::read(snap.join("state")).unwrap(), b"state");
    assert_eq!(std::fs::read(snap.join("memory")).unwrap(), b"memory");
    assert_eq!(api_client::query_state(&sock).unwrap(), VmState::Running);
}

#[test]
fn snapshot_of_a_paused_vm_leaves_it_paused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let vm = MockVm::default();
    let _server =
        ApiServer::start(&sock, vm.clone(), InitialState::Paused(VmConfig::default())).unwrap();
    assert_eq!(api_client::query_state(&sock).unwrap(), VmState::Paused);
    let snap = dir.path().join("snap");
    assert_eq!(
        api_client::snapshot_to_dir(&sock, &snap).unwrap(),
        VmState::Paused
    );
    assert_eq!(vm.calls(), ["snapshot"]);
    assert_eq!(api_client::query_state(&sock).unwrap(), VmState::Paused);
}

#[test]
fn restore_waits_for_the_socket_and_loads_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    std::fs::create_dir(&snap).unwrap();
    std::fs::write(snap.join("state"), b"state").unwrap();
    std::fs::write(snap.join("memory"), b"memory").unwrap();
    let sock = dir.path().join("api.sock");
    let vm = MockVm::default();
    // The VM process creates its socket a little later.
    let starter = {
        let (sock, vm) = (sock.clone(), vm.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            ApiServer::start(&sock, vm, InitialState::AwaitingConfig).unwrap()
        })
    };
    api_client::restore_from_dir(&sock, &snap, true, Duration::from_secs(20)).unwrap();
    let _server = starter.join().unwrap();
    assert_eq!(vm.calls(), ["load", "resume"]);
    assert_eq!(api_client::query_state(&sock).unwrap(), VmState::Running);
}

#[test]
fn errors_name_the_socket_and_the_servers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let err = api_client::query_state(&missing).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("none.sock") && msg.contains("--api-sock"),
        "{msg}"
    );
    let err = api_client::restore_from_dir(&missing, dir.path(), true, Duration::from_millis(50))
        .unwrap_err();
    assert!(format!("{err:#}").contains("no API server at"), "{err:#}");

    // A VM not started yet: nothing to snapshot, pause refused with
    // Firecracker's message.
    let sock = dir.path().join("api.sock");
    let _server = ApiServer::start(&sock, MockVm::default(), InitialState::AwaitingConfig).unwrap();
    let err = api_client::snapshot_to_dir(&sock, &dir.path().join("s")).unwrap_err();
    assert!(format!("{err:#}").contains("not started"), "{err:#}");
    let err = api_client::pause(&sock_args(&sock)).unwrap_err();
    assert!(
        format!("{err:#}").contains("not supported before starting the microVM"),
        "{err:#}"
    );
    // A directory without a snapshot: the load's error comes back.
    let err = api_client::restore_from_dir(
        &sock,
        &dir.path().join("empty"),
        true,
        Duration::from_secs(5),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("empty/state"), "{err:#}");
}
