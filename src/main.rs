//! The `cloudci` binary: parses the command line, runs it, and turns failures into one line on
//! stderr and an exit code (0 ok, 1 failure, 2 usage, 3 authentication/permission, 4 not found).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cloudci::cli::Cli::parse();
    cloudci::cli::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
