//! What the two binaries of this crate share: runc's command line
//! ([`runc`]), used by `virtkit ctr` and by `virtkit-runc` (for Podman and
//! containerd). Argument parsing and output only; the logic lives in the
//! library crates.

pub mod runc;
