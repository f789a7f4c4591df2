//! The apps' token tables in PostgreSQL (`<app>_<platform>(user_id, token,
//! …)`, the seed's): dead tokens are deleted from them in batches (`DELETE
//! … WHERE token = ANY($1)`), so the app stops sending to devices that are
//! gone; and a user's tokens are read from them, to push to a user.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::InvalidTokensConfig;
use crate::topic::Route;

/// Tokens waiting for a flush, at most; past it the oldest are dropped
/// (and logged) rather than growing without bound while the database is down.
const MAX_BUFFERED: usize = 100_000;

/// Hands dead tokens to the batching task.
#[derive(Clone)]
pub(crate) struct InvalidTokens {
    tx: mpsc::Sender<(String, String)>,
    /// Tells the task to flush and end, even while senders remain (the HTTP
    /// push API holds one for as long as the server runs).
    closed: CancellationToken,
    /// `{app}` and `{platform}` are replaced to name the table.
    table: String,
}

impl InvalidTokens {
    /// Starts the task; it flushes and ends on [`InvalidTokens::close`].
    pub(crate) fn spawn(config: &InvalidTokensConfig) -> (InvalidTokens, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4_096);
        let closed = CancellationToken::new();
        let task = Batcher {
            url: config.postgres_url.clone(),
            batch: config.batch.max(1),
            interval: config.flush_interval,
            client: None,
            pending: HashMap::new(),
            buffered: 0,
        };
        let handle = tokio::spawn(task.run(rx, closed.clone()));
        let tokens = InvalidTokens {
            tx,
            closed,
            table: config.table.clone(),
        };
        (tokens, handle)
    }

    /// Queues `token` of `route` for deletion.
    pub(crate) async fn delete(&self, route: &Route, token: &str) {
        let table = table(&self.table, route);
        // Only fails when the task is gone, i.e. during shutdown.
        let _ = self.tx.send((table, token.to_owned())).await;
    }

    /// Deletes what is queued, then ends the task.
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }
}

struct Batcher {
    /// The database, as `tokio-postgres` takes it.
    url: String,
    /// Tokens that trigger a flush before the interval.
    batch: usize,
    /// Longest a token waits.
    interval: Duration,
    /// The open connection; reopened on the next flush after an error.
    client: Option<Client>,
    /// Tokens per table.
    pending: HashMap<String, Vec<String>>,
    /// Tokens in `pending`, bounded by `MAX_BUFFERED`.
    buffered: usize,
}

impl Batcher {
    async fn run(mut self, mut rx: mpsc::Receiver<(String, String)>, closed: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = closed.cancelled() => {
                    while let Ok((table, token)) = rx.try_recv() {
                        self.add(table, token);
                    }
                    break;
                }
                next = rx.recv() => match next {
                    Some((table, token)) => {
                        self.add(table, token);
                        if self.buffered >= self.batch {
                            self.flush().await;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.flush().await,
            }
        }
        self.flush().await;
    }

    fn add(&mut self, table: String, token: String) {
        if self.buffered >= MAX_BUFFERED {
            warn!(%table, "Invalid-token buffer full; token dropped.");
            return;
        }
        self.pending.entry(table).or_default().push(token);
        self.buffered += 1;
    }

    async fn flush(&mut self) {
        if self.buffered == 0 {
            return;
        }
        let client = match &self.client {
            Some(c) if !c.is_closed() => c,
            _ => match connect(&self.url).await {
                Ok(c) => self.client.insert(c),
                Err(e) => {
                    warn!(error = %e, buffered = self.buffered, "PostgreSQL unreachable; tokens kept.");
                    return;
                }
            },
        };
        let mut failed = HashMap::new();
        for (table, mut tokens) in self.pending.drain() {
            tokens.sort_unstable();
            tokens.dedup();
            let sql = format!("DELETE FROM {} WHERE token = ANY($1)", quoted(&table));
            match client.execute(&sql, &[&tokens]).await {
                Ok(rows) => {
                    info!(%table, tokens = tokens.len(), rows, "Invalid tokens deleted.");
                }
                // A missing table or a bad column will not heal: drop those;
                // a lost connection will: keep them for the next flush.
                Err(e) if client.is_closed() => {
                    warn!(%table, error = %e, "Invalid tokens not deleted; will retry.");
                    failed.insert(table, tokens);
                }
                Err(e) => warn!(%table, error = %e, "Invalid tokens not deleted."),
            }
        }
        self.buffered = failed.values().map(Vec::len).sum();
        self.pending = failed;
        if self.buffered > 0 {
            self.client = None;
        }
    }
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "PostgreSQL connection ended.");
        }
    });
    Ok(client)
}

/// Where a route's tokens are: `template` with `{app}` and `{platform}`.
fn table(template: &str, route: &Route) -> String {
    template
        .replace("{app}", &route.app)
        .replace("{platform}", route.platform.as_str())
}

/// Reads the apps' token tables.
pub(crate) struct TokenTable {
    url: String,
    /// `{app}` and `{platform}` are replaced to name the table.
    template: String,
    /// One connection, opened on first use and again after it fails.
    client: tokio::sync::Mutex<Option<Client>>,
}

/// Tokens one request may fan out to, at most.
pub(crate) const MAX_USER_TOKENS: usize = 10_000;

impl TokenTable {
    pub(crate) fn new(config: &InvalidTokensConfig) -> TokenTable {
        TokenTable {
            url: config.postgres_url.clone(),
            template: config.table.clone(),
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// `(user_id, token)` of every device of `users` for `route`, by user
    /// then token, at most [`MAX_USER_TOKENS`].
    pub(crate) async fn of_users(
        &self,
        route: &Route,
        users: &[String],
    ) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
        let mut client = self.client.lock().await;
        let live = match client.take() {
            Some(c) if !c.is_closed() => c,
            _ => connect(&self.url).await?,
        };
        let sql = format!(
            "SELECT DISTINCT user_id::text, token FROM {} WHERE user_id::text = ANY($1) \
             ORDER BY 1, 2 LIMIT {MAX_USER_TOKENS}",
            quoted(&table(&self.template, route))
        );
        let rows = live.query(&sql, &[&users]).await;
        *client = Some(live);
        Ok(rows?
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
            .collect())
    }
}

/// `name` as a quoted SQL identifier; a dot separates a schema.
fn quoted(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_identifiers() {
        assert_eq!(quoted("game_apns"), "\"game_apns\"");
        assert_eq!(
            quoted("push.tower-defense_gcm"),
            "\"push\".\"tower-defense_gcm\""
        );
        assert_eq!(
            quoted("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
    }
}
