//! The control API of a running VM: HTTP/1.1 with JSON bodies on a Unix
//! socket, following Firecracker's API so that `curl --unix-socket` and
//! scripts written for Firecracker work.
//!
//! | request | body | reply |
//! |---|---|---|
//! | `GET /` | | [`InstanceInfo`] (`state`: "Not started", "Running", "Paused") |
//! | `GET /machine-config` | | [`MachineConfig`] |
//! | `GET /vm/config` | | [`VmConfig`] |
//! | `PUT /machine-config` | [`MachineConfig`] | 204, before start only |
//! | `PATCH /machine-config` | [`MachineConfigUpdate`] (fields to change) | 204, before start only |
//! | `PUT /boot-source` | [`BootSource`] | 204, before start only |
//! | `PUT /drives/{id}` | [`Drive`] | 204, before start only |
//! | `PUT /network-interfaces/{id}` | [`NetworkInterface`] | 204, before start only |
//! | `PUT /actions` | `{"action_type": "InstanceStart" \| "SendCtrlAltDel"}` | 204 |
//! | `PATCH /vm` | `{"state": "Paused" \| "Resumed"}` | 204, after start |
//! | `PUT /snapshot/create` | [`SnapshotCreateParams`] | 204, when paused |
//! | `PUT /snapshot/load` | `snapshot_path`, `mem_backend` or `mem_file_path`, `resume_vm` | 204, into a VM not configured nor started |
//!
//! Errors are 400 with `{"fault_message": "..."}`: malformed HTTP or
//! JSON, a body over [`MAX_BODY_BYTES`], unknown fields, an unknown path
//! or method ("Invalid request method and/or path: ..."), and requests
//! out of order. The one extension to Firecracker's schemas is
//! `virtkit_user_net` in a network interface (see [`NetworkInterface`]).
//!
//! The pieces: [`http`] (the HTTP/1.1 framing, both ways), [`ApiRequest`]
//! (routing and typed bodies), [`Dispatcher`] (the state machine every
//! board shares, calling the board's [`VmController`]), [`ApiServer`]
//! (the socket and its thread) and [`ApiClient`] (for the command line).

pub mod client;
mod dispatch;
pub mod http;
mod request;
mod server;
mod types;

pub use client::{ApiClient, ClientError, MEMORY_FILE, STATE_FILE};
pub use dispatch::{ApiReply, Dispatcher, InitialState, VmController, MAX_VCPUS};
pub use http::MAX_BODY_BYTES;
pub use request::ApiRequest;
pub use server::{ApiServer, ServerError, ServerOptions, MAX_CONNECTIONS};
pub use types::{
    ActionType, BootSource, Drive, Fault, InstanceAction, InstanceInfo, MachineConfig,
    MachineConfigUpdate, MemBackend, MemBackendType, NetworkInterface, SnapshotCreateParams,
    SnapshotLoadParams, SnapshotType, UserNet, VmConfig, VmState, VmStateChange, VmStateRequest,
};

/// Why a request was refused; its message becomes the `fault_message`.
/// Boards return [`ApiError::BadRequest`] (or [`ApiError::Internal`])
/// from their [`VmController`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("Invalid request method and/or path: {method} {path}.")]
    InvalidPathMethod { method: String, path: String },
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Json(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("The requested operation is not supported after starting the microVM.")]
    NotSupportedPostBoot,
    #[error("The requested operation is not supported before starting the microVM.")]
    NotSupportedPreBoot,
    #[error("Loading a microVM snapshot not allowed after configuring boot-specific resources.")]
    LoadSnapshotNotAllowed,
    #[error("The requested operation is not supported: {0}")]
    NotSupported(String),
    /// A failure of the VM monitor itself (500).
    #[error("Internal error: {0}")]
    Internal(String),
}
