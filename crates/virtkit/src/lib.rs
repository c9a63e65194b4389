//! What the two binaries of this crate share: runc's command line
//! ([`runc`]), used by `virtkit ctr` and by `virtkit-runc` (for Podman and
//! containerd); the clients of a VM's control API ([`api_client`]).
//! Argument parsing and output only; the logic lives in the library
//! crates.

pub mod api_client;
pub mod runc;
