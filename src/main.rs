//! The `cloudci` binary: parses the command line, runs it, and turns failures into one line on
//! stderr and an exit code (0 ok, 1 failure, 2 usage, 3 authentication/permission, 4 not found).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// See `Cargo.toml` (mimalloc) for why not the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cloudci::cli::Cli::parse();
    cloudci::cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        // stdout's reader went away (`cloudci ... | head`): not a failure, nothing to say.
        Err(failure) if failure.is_quiet() => ExitCode::SUCCESS,
        Err(failure) => {
            // Not eprintln!: a closed stderr must not turn a failure into a panic.
            let _ = writeln!(std::io::stderr(), "error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
