//! `virtkit img`: placeholder until its issue lands; owned by its issue's work.

/// Arguments of `virtkit img`.
#[derive(clap::Args)]
pub struct Args {
    /// Arguments (not parsed yet)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn main(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("`virtkit img` is not available in this build yet")
}
