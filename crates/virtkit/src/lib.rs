//! What the two binaries of this crate share: runc's command line
//! ([`runc`]), used by `virtkit ctr` and by `virtkit-runc` (for Podman and
//! containerd); the clients of a VM's control API ([`api_client`]).
//! Argument parsing and output only; the logic lives in the library
//! crates.

pub mod api_client;
pub mod runc;

/// The C library's `pow`, from the `libm` crate (musl's, in Rust).
///
/// It is the only function of glibc's libm the binaries call (indicatif's
/// progress estimate, through `f64::powf`), and taking it from libm.so
/// costs every start of `virtkit`, a one-line tiny guest included, the
/// loading and relocation of that library and 300 KB of resident memory.
/// Defined here, the linker resolves the call to it and drops libm.so.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}
