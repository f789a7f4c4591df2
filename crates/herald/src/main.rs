//! `herald`: the server and a small client for it.

mod cli;
mod settings;

fn main() -> std::process::ExitCode {
    cli::main()
}
