//! `virtkit-runc`: runc's command line at top level, a thin entry into the
//! same code as `virtkit ctr`, for `podman --runtime` and containerd's shim.

fn main() {
    eprintln!("virtkit-runc: not available in this build yet");
    std::process::exit(1);
}
