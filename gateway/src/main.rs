//! The `wanmig` command: the site gateway daemon and the operator CLI.
//! Argument parsing and error reporting (anyhow) live here, in `cli/`; the
//! work is done by the `wanmig_gateway` library.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// `e` and its causes joined by ": ", leaving out a cause whose text the
/// message so far already holds (many errors quote their source in their
/// own message), so nothing is said twice.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}
