//! The API server: a Unix socket served by its own thread, so that no
//! client, however slow or silent, ever holds up the VM's vCPUs.
//!
//! One thread waits (`poll`) on the listening socket, a wake-up socket
//! (for shutdown) and every open connection, so an idle keep-alive
//! connection costs nothing and does not stand in the way of the next
//! client. Requests run one at a time, in arrival order, as in
//! Firecracker. A request whose bytes stop arriving is answered 408 and
//! its connection closed after [`ServerOptions::request_timeout`].

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::dispatch::{ApiReply, Dispatcher, InitialState, VmController};
use super::http::{self, Parsed};
use super::request::ApiRequest;
use super::types::Fault;
use super::ApiError;

/// Open connections at once: a few for scripts and the CLI; the oldest
/// idle one is closed to make room for a new one.
pub const MAX_CONNECTIONS: usize = 16;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("API socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("API socket {0}: another process is serving it")]
    InUse(PathBuf),
    #[error("API socket {0}: exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
}

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The instance name `GET /` reports (Firecracker's `--id`).
    pub id: String,
    /// A request must be whole this long after its first byte.
    pub request_timeout: Duration,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// Writing a response may take this long (a client that does not
    /// read is dropped).
    pub write_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            id: "anonymous-instance".to_string(),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// A running API server. Dropping it stops the thread and removes the
/// socket file.
pub struct ApiServer {
    path: PathBuf,
    /// The socket file's identity, so drop removes ours and nothing else.
    ino: (u64, u64),
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Binds `path` with mode 0600 from the first instant: the socket is
/// bound in a private directory next to it, made 0600, then renamed into
/// place. A leftover socket nobody serves is replaced.
fn bind_private(path: &Path) -> Result<(UnixListener, (u64, u64)), ServerError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            // Stale: its server is gone. The rename below replaces it.
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| ServerError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let mut tmp_dir_name = std::ffi::OsString::from(".");
    tmp_dir_name.push(name);
    tmp_dir_name.push(format!(".{}.tmp", std::process::id()));
    let tmp_dir = parent.join(tmp_dir_name);
    let _ = fs::remove_dir_all(&tmp_dir);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp_dir)
        .map_err(io_err(&tmp_dir))?;
    let tmp_sock = tmp_dir.join("sock");
    let result = (|| {
        let listener = UnixListener::bind(&tmp_sock).map_err(io_err(&tmp_sock))?;
        fs::set_permissions(&tmp_sock, fs::Permissions::from_mode(0o600))
            .map_err(io_err(&tmp_sock))?;
        fs::rename(&tmp_sock, path).map_err(io_err(path))?;
        let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
        Ok((listener, (meta.dev(), meta.ino())))
    })();
    let _ = fs::remove_file(&tmp_sock);
    let _ = fs::remove_dir(&tmp_dir);
    result
}

impl ApiServer {
    /// Serves the API for `controller` on a new socket at `path`.
    pub fn start<C: VmController + 'static>(
        path: impl AsRef<Path>,
        controller: C,
        initial: InitialState,
    ) -> Result<ApiServer, ServerError> {
        Self::start_with(path, controller, initial, ServerOptions::default())
    }

    /// [`ApiServer::start`] with explicit [`ServerOptions`].
    pub fn start_with<C: VmController + 'static>(
        path: impl AsRef<Path>,
        controller: C,
        initial: InitialState,
        options: ServerOptions,
    ) -> Result<ApiServer, ServerError> {
        let path = path.as_ref().to_path_buf();
        let (listener, ino) = bind_private(&path)?;
        // accept() must never block the loop (a client may vanish between
        // poll and accept).
        listener.set_nonblocking(true).map_err(io_err(&path))?;
        let (wake, wake_rx) = UnixStream::pair().map_err(io_err(&path))?;
        let dispatcher = Dispatcher::new(controller, initial, options.id.clone());
        let thread = std::thread::Builder::new()
            .name("api-server".into())
            .spawn(move || serve(listener, wake_rx, dispatcher, options))
            .map_err(io_err(&path))?;
        Ok(ApiServer {
            path,
            ino,
            wake,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Closing the wake socket's other end makes it readable (EOF).
        let _ = self.wake.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// One client connection.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// When the first byte of the request in `buf` arrived.
    request_started: Option<Instant>,
    last_activity: Instant,
    sent_continue: bool,
}

/// Waits until one of `fds` is readable (or hung up) or `timeout` passes;
/// returns which are ready.
fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| {
        // Round up so a deadline 0.4 ms away does not spin.
        i32::try_from(t.as_millis() + 1).unwrap_or(i32::MAX)
    });
    loop {
        // SAFETY: `pfds` is a valid, exclusively borrowed array of
        // `pfds.len()` pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

fn serve<C: VmController>(
    listener: UnixListener,
    wake: UnixStream,
    mut dispatcher: Dispatcher<C>,
    options: ServerOptions,
) {
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let now = Instant::now();
        let next_deadline = conns
            .iter()
            .map(|c| match c.request_started {
                Some(t) => t + options.request_timeout,
                None => c.last_activity + options.idle_timeout,
            })
            .min();
        let timeout = next_deadline.map(|d| d.saturating_duration_since(now));
        let mut fds = vec![wake.as_raw_fd(), listener.as_raw_fd()];
        fds.extend(conns.iter().map(|c| c.stream.as_raw_fd()));
        let Ok(ready) = poll_readable(&fds, timeout) else {
            // poll fails only on bad arguments or no memory: nothing left
            // to serve with.
            return;
        };
        if ready[0] {
            return;
        }
        // Serve the existing connections before accepting new ones, so the
        // indices of `ready` still match `conns`.
        let mut keep = Vec::with_capacity(conns.len());
        for (conn, is_ready) in conns.drain(..).zip(&ready[2..]) {
            let alive = if *is_ready {
                read_and_serve(conn, &mut dispatcher, &options)
            } else {
                check_deadlines(conn, &options)
            };
            keep.extend(alive);
        }
        conns = keep;
        if ready[1] {
            accept_all(&listener, &mut conns, &options);
        }
    }
}

fn accept_all(listener: &UnixListener, conns: &mut Vec<Conn>, options: &ServerOptions) {
    while let Ok((stream, _)) = listener.accept() {
        if stream
            .set_write_timeout(Some(options.write_timeout))
            .is_err()
        {
            continue;
        }
        if conns.len() >= MAX_CONNECTIONS {
            // Make room: drop the connection idle the longest.
            if let Some(oldest) = conns
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.last_activity)
                .map(|(i, _)| i)
            {
                conns.remove(oldest);
            }
        }
        conns.push(Conn {
            stream,
            buf: Vec::new(),
            request_started: None,
            last_activity: Instant::now(),
            sent_continue: false,
        });
    }
}

/// Closes a connection whose request or idle time ran out.
fn check_deadlines(mut conn: Conn, options: &ServerOptions) -> Option<Conn> {
    let now = Instant::now();
    match conn.request_started {
        Some(t) if now >= t + options.request_timeout => {
            let _ = reply_error(
                &mut conn.stream,
                408,
                &format!(
                    "The request was not received in full within {} ms.",
                    options.request_timeout.as_millis()
                ),
                false,
            );
            None
        }
        None if now >= conn.last_activity + options.idle_timeout => None,
        _ => Some(conn),
    }
}

fn reply_error(
    stream: &mut UnixStream,
    status: u16,
    msg: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let body = serde_json::to_string(&Fault {
        fault_message: msg.to_string(),
    })
    .unwrap_or_else(|_| "{}".to_string());
    http::write_response(stream, status, Some(&body), keep_alive)
}

/// Reads what arrived and answers every whole request in it. Returns the
/// connection if it stays open.
fn read_and_serve<C: VmController>(
    mut conn: Conn,
    dispatcher: &mut Dispatcher<C>,
    options: &ServerOptions,
) -> Option<Conn> {
    let mut chunk = [0u8; 4096];
    let n = match conn.stream.read(&mut chunk) {
        Ok(0) | Err(_) => return None,
        Ok(n) => n,
    };
    conn.last_activity = Instant::now();
    conn.request_started.get_or_insert(conn.last_activity);
    conn.buf.extend_from_slice(&chunk[..n]);
    loop {
        match http::parse_request(&conn.buf) {
            Ok(Parsed::Incomplete { expect_continue }) => {
                if conn.buf.is_empty() {
                    conn.request_started = None;
                }
                if expect_continue && !conn.sent_continue {
                    conn.sent_continue = true;
                    http::write_continue(&mut conn.stream).ok()?;
                }
                return check_deadlines(conn, options);
            }
            Ok(Parsed::Complete { message, consumed }) => {
                conn.buf.drain(..consumed);
                conn.sent_continue = false;
                conn.request_started = (!conn.buf.is_empty()).then(Instant::now);
                let keep_alive = message.keep_alive;
                let outcome = ApiRequest::parse(&message).and_then(|r| dispatcher.handle(r));
                let written = match outcome {
                    Ok(ApiReply::Empty) => {
                        http::write_response(&mut conn.stream, 204, None, keep_alive)
                    }
                    Ok(ApiReply::Json(body)) => {
                        http::write_response(&mut conn.stream, 200, Some(&body), keep_alive)
                    }
                    Err(e) => reply_error(&mut conn.stream, e.status(), &e.to_string(), keep_alive),
                };
                if written.is_err() || !keep_alive {
                    return None;
                }
            }
            Err(e) => {
                // The stream can no longer be framed: answer and close.
                let _ = reply_error(&mut conn.stream, 400, &e.to_string(), false);
                return None;
            }
        }
    }
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Internal(_) => 500,
            _ => 400,
        }
    }
}
