//! `virtkit ctr`: the OCI runtime with runc's command line (the same
//! definitions as `virtkit-runc`, from the container crate).

/// Arguments of `virtkit ctr`: runc's global flags and subcommands.
pub use container::cli::RuncArgs as Args;

pub fn main(args: Args) -> anyhow::Result<i32> {
    Ok(container::cli::run(args))
}
