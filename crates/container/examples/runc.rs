//! The runtime's command line without the rest of virtkit: a quick build
//! of the same code as `virtkit-runc`, for trying the runtime out while
//! working on this crate (`cargo run -p container --example runc -- ...`).

use clap::Parser;

fn main() {
    let cli = container::cli::RuncCli::parse();
    std::process::exit(container::cli::run(cli.args));
}
