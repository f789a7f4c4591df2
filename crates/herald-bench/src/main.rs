//! herald-bench: a load generator for Herald and its peers. See `docs/benchmarks.md`.

mod adapters;
mod cli;
mod clients;
mod conn;
mod error;
mod head;
mod http;
mod net;
mod proc;
mod report;
mod scenarios;
mod sse;
mod stats;
mod token;
mod worker;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

use crate::adapters::Adapter;
use crate::cli::Cli;
use crate::net::Endpoint;

/// jemalloc instead of glibc malloc: the generator must not be the limit, and glibc's allocator
/// was a seventh of its core's time in the connect scenario (docs/benchmarks.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.common.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let c = &cli.common;
    let endpoint = Endpoint::parse(&c.url)?;
    let sub_endpoint = match &c.subscribe_url {
        Some(url) => Endpoint::parse(url)?,
        None => endpoint.clone(),
    };
    let adapter = Arc::new(Adapter::new(
        c.target,
        endpoint,
        sub_endpoint,
        c.connect_timeout,
        c.publish_concurrency.max(1),
    )?);
    if let Some(index) = c.worker_index {
        let run = c.run_id.context("--worker-index needs --run-id")?;
        let worker = worker::Worker::new(&cli, index, run, adapter, true);
        worker::serve_stdio(worker).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let (connections, _) = cli.scenario.shape();
    let per_process = connections / c.procs.max(1);
    if per_process > 19_500 {
        eprintln!(
            "herald-bench: warning: {per_process} connections per process exceeds the ~19,500 that \
             20,000 open files allow; use --procs"
        );
    }
    // A non-zero random run id tells this run's messages from any a server replays.
    let run = rand::random::<u32>().max(1);
    let report = scenarios::run(cli.clone(), run, adapter).await?;
    let table = report.table();
    if cli.common.json {
        eprint!("{table}");
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{table}");
    }
    Ok(ExitCode::SUCCESS)
}
