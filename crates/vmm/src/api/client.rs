//! A small client of the control API (virtkit's or Firecracker's), for
//! the command line: one keep-alive connection, typed calls, and the
//! snapshot-to-a-directory convention of `virtkit vm snapshot/restore`.

use std::fs;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::http::{self, HttpError, HttpResponse, Parsed};
use super::types::{
    Fault, InstanceInfo, MemBackend, MemBackendType, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, VmConfig, VmState, VmStateChange, VmStateRequest,
};

/// In a snapshot directory: the state file.
pub const STATE_FILE: &str = "state";
/// In a snapshot directory: the guest memory file.
pub const MEMORY_FILE: &str = "memory";

/// How long the client waits for a response. Snapshots of large guests
/// write gigabytes, so this is generous; it only guards against a hung
/// server.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);

/// Errors of API calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the API socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the API socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bad response from the API socket {path}: {source}")]
    Http {
        path: PathBuf,
        #[source]
        source: HttpError,
    },
    #[error("the API server closed the connection before answering {0}")]
    Closed(String),
    #[error("bad response body from {what}: {reason}")]
    Body { what: String, reason: String },
    /// The server refused the request: its status and `fault_message`.
    #[error("{what}: {message} (HTTP {status})")]
    Api {
        what: String,
        status: u16,
        message: String,
    },
    #[error("the VM is not started: nothing to snapshot")]
    NotStarted,
    #[error("creating the snapshot directory {path}: {source}")]
    SnapshotDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A connection to an API socket.
pub struct ApiClient {
    path: PathBuf,
    stream: Option<UnixStream>,
    buf: Vec<u8>,
}

impl ApiClient {
    /// Connects to the API socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<ApiClient, ClientError> {
        let mut client = ApiClient {
            path: path.as_ref().to_path_buf(),
            stream: None,
            buf: Vec::new(),
        };
        client.reconnect()?;
        Ok(client)
    }

    fn reconnect(&mut self) -> Result<&mut UnixStream, ClientError> {
        let stream = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        stream
            .set_read_timeout(Some(RESPONSE_TIMEOUT))
            .map_err(|source| self.io(source))?;
        self.buf.clear();
        Ok(self.stream.insert(stream))
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends one request and returns the final response (any status).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<HttpResponse, ClientError> {
        let what = format!("{method} {path}");
        let stream = match self.stream.as_mut() {
            Some(s) => s,
            None => self.reconnect()?,
        };
        if let Err(e) = http::write_request(stream, method, path, body) {
            // The server may have closed an idle keep-alive connection:
            // retry once on a fresh one.
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                let stream = self.reconnect()?;
                http::write_request(stream, method, path, body).map_err(|e| self.io(e))?;
            } else {
                return Err(self.io(e));
            }
        }
        loop {
            match http::parse_response(&self.buf).map_err(|source| ClientError::Http {
                path: self.path.clone(),
                source,
            })? {
                Parsed::Complete { message, consumed } => {
                    self.buf.drain(..consumed);
                    if (100..200).contains(&message.status) {
                        continue;
                    }
                    if !message.keep_alive {
                        self.stream = None;
                        self.buf.clear();
                    }
                    return Ok(message);
                }
                Parsed::Incomplete { .. } => {
                    let mut chunk = [0u8; 4096];
                    let stream = self
                        .stream
                        .as_mut()
                        .ok_or(ClientError::Closed(what.clone()))?;
                    match stream.read(&mut chunk) {
                        Ok(0) => {
                            self.stream = None;
                            return Err(ClientError::Closed(what));
                        }
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(self.io(e)),
                    }
                }
            }
        }
    }

    /// A request whose success is 204 (or 200): errors carry the
    /// server's `fault_message`.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Vec<u8>, ClientError> {
        let response = self.request(method, path, body)?;
        if (200..300).contains(&response.status) {
            return Ok(response.body);
        }
        let message = serde_json::from_slice::<Fault>(&response.body)
            .map(|f| f.fault_message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&response.body).into_owned());
        Err(ClientError::Api {
            what: format!("{method} {path}"),
            status: response.status,
            message,
        })
    }

    fn put<T: Serialize>(&mut self, method: &str, path: &str, body: &T) -> Result<(), ClientError> {
        let json = serde_json::to_string(body).map_err(|e| ClientError::Body {
            what: format!("{method} {path}"),
            reason: e.to_string(),
        })?;
        self.call(method, path, Some(&json)).map(drop)
    }

    fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, ClientError> {
        let body = self.call("GET", path, None)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Body {
            what: format!("GET {path}"),
            reason: e.to_string(),
        })
    }

    /// `GET /`.
    pub fn instance_info(&mut self) -> Result<InstanceInfo, ClientError> {
        self.get("/")
    }

    /// `GET /vm/config`.
    pub fn vm_config(&mut self) -> Result<VmConfig, ClientError> {
        self.get("/vm/config")
    }

    /// `PATCH /vm` `{"state": "Paused"}`.
    pub fn pause(&mut self) -> Result<(), ClientError> {
        self.put(
            "PATCH",
            "/vm",
            &VmStateChange {
                state: VmStateRequest::Paused,
            },
        )
    }

    /// `PATCH /vm` `{"state": "Resumed"}`.
    pub fn resume(&mut self) -> Result<(), ClientError> {
        self.put(
            "PATCH",
            "/vm",
            &VmStateChange {
                state: VmStateRequest::Resumed,
            },
        )
    }

    /// `PUT /snapshot/create` of a full snapshot.
    pub fn create_snapshot(&mut self, state: &Path, memory: &Path) -> Result<(), ClientError> {
        self.put(
            "PUT",
            "/snapshot/create",
            &SnapshotCreateParams {
                snapshot_type: SnapshotType::Full,
                snapshot_path: state.to_path_buf(),
                mem_file_path: memory.to_path_buf(),
            },
        )
    }

    /// `PUT /snapshot/load` from a memory file.
    pub fn load_snapshot(
        &mut self,
        state: &Path,
        memory: &Path,
        resume: bool,
    ) -> Result<(), ClientError> {
        self.put(
            "PUT",
            "/snapshot/load",
            &SnapshotLoadParams {
                snapshot_path: state.to_path_buf(),
                mem_backend: MemBackend {
                    backend_type: MemBackendType::File,
                    backend_path: memory.to_path_buf(),
                },
                enable_diff_snapshots: false,
                resume_vm: resume,
            },
        )
    }

    /// `virtkit vm snapshot`: writes `dir/state` and `dir/memory`
    /// (creating `dir`). A running VM is paused for the snapshot and
    /// resumed after it, even when the snapshot fails; a paused VM stays
    /// paused. Returns the state the VM was found in.
    pub fn snapshot_to_dir(&mut self, dir: &Path) -> Result<VmState, ClientError> {
        let state = self.instance_info()?.state;
        if state == VmState::NotStarted {
            return Err(ClientError::NotStarted);
        }
        fs::create_dir_all(dir).map_err(|source| ClientError::SnapshotDir {
            path: dir.to_path_buf(),
            source,
        })?;
        if state == VmState::Running {
            self.pause()?;
        }
        let result = self.create_snapshot(&dir.join(STATE_FILE), &dir.join(MEMORY_FILE));
        if state == VmState::Running {
            let resumed = self.resume();
            result?;
            resumed?;
        } else {
            result?;
        }
        Ok(state)
    }

    /// The API part of `virtkit vm restore DIR`: loads `dir/state` and
    /// `dir/memory` into a VM that has not started, running it at once
    /// when `resume`.
    pub fn restore_from_dir(&mut self, dir: &Path, resume: bool) -> Result<(), ClientError> {
        self.load_snapshot(&dir.join(STATE_FILE), &dir.join(MEMORY_FILE), resume)
    }
}
