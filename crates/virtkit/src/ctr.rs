//! `virtkit ctr`: the OCI runtime with runc's command line (the same
//! definitions as `virtkit-runc`, from [`virtkit::runc`]).

/// Arguments of `virtkit ctr`: runc's global flags and subcommands.
pub use virtkit::runc::RuncArgs as Args;

pub fn main(args: Args) -> anyhow::Result<i32> {
    Ok(virtkit::runc::run(args))
}
