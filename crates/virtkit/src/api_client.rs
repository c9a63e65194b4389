//! Command-line clients of a running VM's control API, so nobody has to
//! write JSON by hand: `virtkit vm state|pause|resume --api-sock PATH`,
//! `virtkit vm snapshot --api-sock PATH DIR` and the API part of
//! `virtkit vm restore DIR`. They speak Firecracker's API, so they also
//! drive a Firecracker socket. The HTTP and the snapshot-directory
//! convention (`DIR/state`, `DIR/memory`) live in `vmm::api`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use vmm::api::{ApiClient, ClientError, VmState};

/// `--api-sock PATH` alone (`vm state`, `vm pause`, `vm resume`).
#[derive(clap::Args, Debug, Clone)]
pub struct SockArgs {
    /// The VM's control socket (its `--api-sock`)
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
}

/// `vm snapshot --api-sock PATH DIR`.
#[derive(clap::Args, Debug, Clone)]
pub struct SnapshotArgs {
    /// The VM's control socket (its `--api-sock`)
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// Directory to write the snapshot to (created): DIR/state and
    /// DIR/memory. A running VM is paused meanwhile and resumed after
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

fn connect(sock: &Path) -> anyhow::Result<ApiClient> {
    ApiClient::connect(sock).context("is the VM running with this --api-sock?")
}

/// The VM's state: "Not started", "Running" or "Paused".
pub fn query_state(sock: &Path) -> anyhow::Result<VmState> {
    Ok(connect(sock)?.instance_info()?.state)
}

/// `virtkit vm state`: prints the state.
pub fn state(args: &SockArgs) -> anyhow::Result<i32> {
    println!("{}", query_state(&args.api_sock)?);
    Ok(0)
}

/// `virtkit vm pause`.
pub fn pause(args: &SockArgs) -> anyhow::Result<i32> {
    connect(&args.api_sock)?.pause()?;
    Ok(0)
}

/// `virtkit vm resume`.
pub fn resume(args: &SockArgs) -> anyhow::Result<i32> {
    connect(&args.api_sock)?.resume()?;
    Ok(0)
}

/// Writes a snapshot of the VM behind `sock` to `dir`; returns the state
/// the VM was found (and is left) in.
pub fn snapshot_to_dir(sock: &Path, dir: &Path) -> anyhow::Result<VmState> {
    connect(sock)?.snapshot_to_dir(dir).with_context(|| {
        format!(
            "snapshot of the VM at {} to {}",
            sock.display(),
            dir.display()
        )
    })
}

/// `virtkit vm snapshot`: reports where the snapshot went on stderr.
pub fn snapshot(args: &SnapshotArgs) -> anyhow::Result<i32> {
    let was = snapshot_to_dir(&args.api_sock, &args.dir)?;
    eprintln!(
        "virtkit: snapshot written to {} ({}, {}); the VM is {}",
        args.dir.display(),
        vmm::api::STATE_FILE,
        vmm::api::MEMORY_FILE,
        match was {
            VmState::Paused => "still paused",
            _ => "running again",
        }
    );
    Ok(0)
}

/// Connects to `sock`, waiting up to `timeout` for it to appear (a VM
/// process just started creates it when it is ready to serve).
pub fn wait_for_api(sock: &Path, timeout: Duration) -> anyhow::Result<ApiClient> {
    let deadline = Instant::now() + timeout;
    loop {
        match ApiClient::connect(sock) {
            Ok(client) => return Ok(client),
            Err(ClientError::Connect { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("no API server at {} after {timeout:?}", sock.display())
                })
            }
        }
    }
}

/// The API part of `virtkit vm restore DIR --api-sock PATH`: loads
/// DIR/state and DIR/memory into the not-yet-started VM behind `sock`
/// (waiting up to `timeout` for its socket) and runs it when `resume`.
pub fn restore_from_dir(
    sock: &Path,
    dir: &Path,
    resume: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for_api(sock, timeout)?
        .restore_from_dir(dir, resume)
        .with_context(|| format!("restoring {} through {}", dir.display(), sock.display()))
}
