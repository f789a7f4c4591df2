//! `herald`: the server and a small client for it.

mod cli;
mod pusher;
mod settings;
mod subscribe;

/// jemalloc instead of glibc malloc: 3–7 % less server CPU per delivery in the fan-out and
/// pairs benchmarks, at the same RSS per idle connection (docs/benchmarks.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
