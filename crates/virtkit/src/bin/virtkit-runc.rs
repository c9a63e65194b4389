//! `virtkit-runc`: runc's command line at top level, a thin entry into the
//! same code as `virtkit ctr`, for `podman --runtime` and containerd's shim.

use clap::Parser;

fn main() {
    let cli = virtkit::runc::RuncCli::parse();
    std::process::exit(virtkit::runc::run(cli.args));
}
