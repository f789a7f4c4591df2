//! The command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald_mobile::Mobile;
use herald_server::Server;
use herald_server::config::LogFormat;

use tokio_util::sync::CancellationToken;

use crate::pusher;
use crate::settings::{self, Settings};
use crate::subscribe::Subscriber;

#[derive(Parser)]
#[command(
    name = "herald",
    about = "Herald: real-time push over WebSocket and SSE",
    version
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// What to do; without one, serve.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Publish one message.
    Publish {
        channel: String,
        /// JSON, or any text (sent as a JSON string).
        data: String,
        #[arg(long)]
        event: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A publisher key, for servers with `auth.api_keys`.
        #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Print messages from channels (comma-separated) as they arrive. Exits
    /// 0 when the server ends the connection as it may (a normal close, a
    /// restart, the lifetime over), 1 on any other close.
    Subscribe {
        channels: String,
        #[arg(long, default_value = "ws://127.0.0.1:8080")]
        url: String,
        /// A connection token (JWT): an identity, and the protected
        /// channels its `channels` claim grants.
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Keep going: reconnect when the connection ends and resume every
        /// channel after the last message printed.
        #[arg(long, short)]
        follow: bool,
    },
    /// Run only the mobile pipeline, configured like the Pusher seed
    /// (`--config` names its YAML file, default `./config/default.yaml`;
    /// `PUSHER_…` variables apply).
    Pusher {
        mode: pusher::Mode,
        /// Debug logs.
        #[arg(long, short)]
        debug: bool,
        /// Logs as JSON.
        #[arg(long, short)]
        json: bool,
        /// APNs' production endpoint instead of the sandbox.
        #[arg(long, short)]
        production: bool,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the effective configuration (file + environment) and print it.
    Check,
    /// Print the default configuration as TOML.
    Default,
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => settings::load(cli.config.as_deref()).and_then(serve),
        Command::Publish {
            channel,
            data,
            event,
            url,
            api_key,
        } => runtime(publish(url, api_key, channel, data, event)),
        Command::Subscribe {
            channels,
            url,
            token,
            follow,
        } => runtime(
            Subscriber {
                url,
                channels: channels
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                token,
                follow,
            }
            .run(),
        ),
        Command::Pusher {
            mode,
            debug,
            json,
            production,
        } => {
            let file = cli.config.clone();
            let default = PathBuf::from("config/default.yaml");
            pusher::load(
                file.as_ref().unwrap_or(&default),
                file.is_some(),
                mode,
                production,
            )
            .and_then(|config| run_pusher(&config, debug, json))
        }
        Command::Config {
            action: ConfigAction::Check,
        } => settings::load(cli.config.as_deref()).map(|c| {
            print!("{}", settings::redacted_toml(&c));
            eprintln!("configuration is valid");
        }),
        Command::Config {
            action: ConfigAction::Default,
        } => {
            print!("{}", settings::default_toml());
            Ok(())
        }
        Command::Version => {
            println!("herald {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime<F: std::future::Future<Output = Result<(), String>>>(f: F) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(f)
}

/// Logs at `level` (`RUST_LOG` wins), as JSON or text.
fn init_logs(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(settings: Settings) -> Result<(), String> {
    let log = &settings.server.log;
    init_logs(&log.level, log.format);
    long_running()?.block_on(async {
        // A stop during start-up takes effect as soon as the server runs.
        let stop_signal = terminate()?;
        let mut server = Server::bind(settings.server)
            .await
            .map_err(|e| format!("cannot start: {e}"))?;
        // Watched before the listener logs that it serves: a SIGHUP from
        // then on reloads, never kills (an operator's habitual reload must
        // not drop every connection).
        #[cfg(unix)]
        {
            let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
            tokio::spawn(reload_on_hangup(hangup, server.tls_reloader()));
        }
        let mobile = if settings.mobile.enabled {
            let mobile = Mobile::start(&settings.mobile)
                .await
                .map_err(|e| format!("cannot start mobile push: {e}"))?;
            let metrics = mobile.metrics();
            server.add_metrics(move |out| metrics.render(out));
            server.add_route(
                herald_mobile::http::PATH,
                mobile.routes(),
                herald_mobile::http::openapi(),
                true,
            );
            Some(mobile)
        } else {
            None
        };
        // Kafka consumption stops with the signal; the pipeline's last
        // flushes wait for the server's requests in flight (POST /api/v1/push).
        let (stop, served) = (CancellationToken::new(), CancellationToken::new());
        let mobile = mobile.map(|m| {
            let (stop, served) = (stop.clone(), served.clone());
            tokio::spawn(m.run_until(stop.cancelled_owned(), served.cancelled_owned()))
        });
        server
            .run(async {
                stop_signal.await;
                stop.cancel();
            })
            .await;
        served.cancel();
        if let Some(mobile) = mobile {
            let _ = mobile.await;
        }
        Ok(())
    })
}

/// The runtime of `serve` and `pusher`: on one core a worker thread beside
/// the accepting thread only adds context switches and cross-thread
/// wake-ups (a `write` to the driver's eventfd per accepted connection), so
/// one thread serves everything; otherwise every core is used.
fn long_running() -> Result<tokio::runtime::Runtime, String> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build().map_err(|e| e.to_string())
}

/// `herald pusher`: the mobile pipeline alone, until SIGINT or SIGTERM.
fn run_pusher(config: &herald_mobile::MobileConfig, debug: bool, json: bool) -> Result<(), String> {
    let format = if json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    init_logs(if debug { "debug" } else { "info" }, format);
    long_running()?.block_on(async {
        let mobile = Mobile::start(config)
            .await
            .map_err(|e| format!("cannot start mobile push: {e}"))?;
        mobile.run(terminate()?).await;
        Ok(())
    })
}

/// Rereads the TLS certificate files on every SIGHUP, for new connections;
/// without TLS there is nothing to reread, and the signal is only logged.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    tls: Option<herald_server::TlsReloader>,
) {
    while hangup.recv().await.is_some() {
        match &tls {
            // Logged either way; a bad certificate leaves the current one serving.
            Some(tls) => drop(tls.reload()),
            None => tracing::info!("SIGHUP: nothing to reload without TLS."),
        }
    }
}

/// Watches SIGINT and SIGTERM from now on: the future resolves on the first.
/// Registered before the server says it listens, so that a stop signal never
/// meets the default action (an abrupt exit) once it serves.
fn terminate() -> Result<impl Future<Output = ()>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt =
            signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch SIGINT: {e}"))?;
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn publish(
    url: String,
    api_key: Option<String>,
    channel: String,
    data: String,
    event: Option<String>,
) -> Result<(), String> {
    let data: serde_json::Value =
        serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
    let mut body = serde_json::json!({"channel": channel, "data": data});
    if let Some(event) = event {
        body["event"] = event.into();
    }
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/v1/publish", url.trim_end_matches('/')))
        .json(&body);
    if let Some(key) = api_key {
        req = req.bearer_auth(key);
    }
    let res = req.send().await.map_err(|e| e.to_string())?;
    let status = res.status();
    let text = res.text().await.map_err(|e| e.to_string())?;
    println!("{text}");
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("server answered {status}"))
    }
}
