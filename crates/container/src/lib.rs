//! container: an OCI runtime (runtime-spec 1.x) with runc's command line.
//!
//! The logic lives here (like youki's libcontainer); runc's command line
//! (clap, tables, log files) lives in the `virtkit` crate (`virtkit::runc`,
//! as youki keeps liboci-cli apart), which calls [`runtime`] and
//! [`exec_request`].
//!
//! - `spec`: config.json, with errors naming the field
//! - `runtime`: create, start, run, exec, kill, delete and the rest
//! - `rootfs`: mounts, /dev, pivot_root, masked and read-only paths
//! - `process`: user, capabilities, rlimits, no_new_privs, exec
//! - `seccomp`: the spec's filter compiled to classic BPF
//! - `cgroups`: v1 and v2 behind one trait
//! - `hooks`, `tty`, `state`, `exeseal`

pub mod cgroups;
pub mod error;
pub mod exec_request;
pub mod exeseal;
pub mod hooks;
pub mod process;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod state;
mod sync;
pub mod tty;

pub use error::{Error, Result};
