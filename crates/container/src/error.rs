//! One error type for the runtime; every variant says what failed and on what.

use std::path::PathBuf;

/// Errors of the OCI runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A container id that could escape the state directory or is unusable.
    #[error("invalid container id {id:?}: {why}")]
    InvalidId { id: String, why: &'static str },
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    /// config.json could not be read or parsed; `field` is the JSON path.
    #[error("{path}: field `{field}`: {msg}")]
    Config {
        path: PathBuf,
        field: String,
        msg: String,
    },
    /// A value of the spec is well-formed JSON but unusable.
    #[error("config.json: field `{field}`: {msg}")]
    Spec { field: String, msg: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {errno}")]
    Sys { what: String, errno: nix::Error },
    #[error("container {id:?} is {status}: {what}")]
    BadState {
        id: String,
        status: String,
        what: &'static str,
    },
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("hook {kind}[{index}] ({path}): {msg}")]
    Hook {
        kind: &'static str,
        index: usize,
        path: String,
        msg: String,
    },
    #[error("{0}")]
    Usage(String),
    /// Failure reported by the container's init or exec'd process during setup.
    #[error("container process: {0}")]
    Child(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Attach context to io and nix results.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|errno| Error::Sys {
            what: what(),
            errno,
        })
    }
}

pub(crate) fn spec_err(field: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Spec {
        field: field.into(),
        msg: msg.into(),
    }
}
