//! The apps' token tables in PostgreSQL (`<app>_<platform>(user_id, token,
//! …)`, the seed's): dead tokens are deleted from them in batches (`DELETE
//! … WHERE token = ANY($1)`), so the app stops sending to devices that are
//! gone; and a user's tokens are read from them, to push to a user.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::InvalidTokensConfig;
use crate::topic::Route;

/// Tokens waiting for a flush, at most; past it the oldest are dropped
/// (and logged) rather than growing without bound while the database is down.
const MAX_BUFFERED: usize = 100_000;
/// Tokens handed over but not yet taken by the batcher. The batcher keeps
/// taking them while a flush waits on the database, so this fills only if
/// the task cannot run at all; past it a token is dropped, not waited for.
const CHANNEL: usize = 4_096;
/// Bound on opening a connection (TCP, TLS, start-up): a blackholed server
/// must not hold tokens (or a user lookup) for the OS's two-minute SYN timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one statement, on the server (`statement_timeout`, which also
/// covers waiting for a lock) and on the client (a server that went silent).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle connection waits before TCP keepalives probe it.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
}

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
        let (tx, rx) = mpsc::channel(CHANNEL);
        let closed = CancellationToken::new();
        let task = Batcher {
            url: config.postgres_url.clone(),
            batch: config.batch.max(1),
            interval: config.flush_interval,
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

    /// Queues `token` of `route` for deletion. Never waits: a push must not
    /// be held up by the database. A token dropped here is reported again
    /// by the next push to it.
    pub(crate) fn delete(&self, route: &Route, token: &str) {
        let table = table(&self.table, route);
        match self.tx.try_send((table, token.to_owned())) {
            Ok(()) => {}
            Err(TrySendError::Full((table, _))) => {
                warn!(%table, "Invalid-token queue full; token dropped.");
            }
            // The task is gone: shutdown.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Deletes what is queued, then ends the task.
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }
}

/// Tokens per table.
type Pending = HashMap<String, Vec<String>>;

struct Batcher {
    /// The database, as `tokio-postgres` takes it.
    url: String,
    /// Tokens that trigger a flush before the interval.
    batch: usize,
    /// Longest a token waits.
    interval: Duration,
    /// Tokens per table, not yet in a flush.
    pending: Pending,
    /// Tokens in `pending`, bounded by `MAX_BUFFERED`.
    buffered: usize,
}

/// What a flush gives back: the connection if still usable, the tokens to
/// try again, and whether the database was reached at all.
struct Flushed {
    client: Option<Client>,
    failed: Pending,
    reached: bool,
}

impl Batcher {
    /// Takes tokens and flushes them. A flush is polled beside the channel,
    /// so tokens keep being taken (into `pending`) however long the
    /// database takes; one flush at a time.
    async fn run(mut self, mut rx: mpsc::Receiver<(String, String)>, closed: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut client = None;
        let mut flushing: Option<Pin<Box<dyn Future<Output = Flushed> + Send>>> = None;
        // After a failed connection only the tick flushes, not every token
        // past `batch`: the interval is the backoff.
        let mut unreachable = false;
        loop {
            let start = tokio::select! {
                () = closed.cancelled() => {
                    while let Ok((table, token)) = rx.try_recv() {
                        self.add(table, token);
                    }
                    break;
                }
                next = rx.recv() => match next {
                    Some((table, token)) => {
                        self.add(table, token);
                        self.buffered >= self.batch && !unreachable
                    }
                    None => break,
                },
                _ = tick.tick() => true,
                flushed = async { flushing.as_mut().expect("guarded").await }, if flushing.is_some() => {
                    flushing = None;
                    unreachable = !flushed.reached;
                    client = self.take_back(flushed);
                    false
                }
            };
            if start && flushing.is_none() && self.buffered > 0 {
                let tokens = std::mem::take(&mut self.pending);
                self.buffered = 0;
                flushing = Some(Box::pin(flush(self.url.clone(), client.take(), tokens)));
            }
        }
        if let Some(flushing) = flushing {
            let flushed = flushing.await;
            client = self.take_back(flushed);
        }
        if self.buffered > 0 {
            let flushed = flush(self.url.clone(), client, std::mem::take(&mut self.pending)).await;
            let lost: usize = flushed.failed.values().map(Vec::len).sum();
            if lost > 0 {
                warn!(tokens = lost, "Invalid tokens not deleted at shutdown.");
            }
        }
    }

    /// Requeues a flush's failed tokens; returns its connection.
    fn take_back(&mut self, flushed: Flushed) -> Option<Client> {
        for (table, tokens) in flushed.failed {
            for token in tokens {
                self.add(table.clone(), token);
            }
        }
        flushed.client
    }

    fn add(&mut self, table: String, token: String) {
        if self.buffered >= MAX_BUFFERED {
            warn!(%table, "Invalid-token buffer full; token dropped.");
            return;
        }
        self.pending.entry(table).or_default().push(token);
        self.buffered += 1;
    }
}

/// Deletes `pending`, one statement per table, over `client` or a new
/// connection; every wait is bounded.
async fn flush(url: String, client: Option<Client>, pending: Pending) -> Flushed {
    let buffered: usize = pending.values().map(Vec::len).sum();
    let client = match client {
        Some(c) if !c.is_closed() => c,
        _ => match connect(&url).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, buffered, "PostgreSQL unreachable; tokens kept.");
                return Flushed {
                    client: None,
                    failed: pending,
                    reached: false,
                };
            }
        },
    };
    let mut failed = Pending::new();
    for (table, mut tokens) in pending {
        tokens.sort_unstable();
        tokens.dedup();
        let sql = format!("DELETE FROM {} WHERE token = ANY($1)", quoted(&table));
        match bounded(client.execute(&sql, &[&tokens])).await {
            Ok(rows) => {
                info!(%table, tokens = tokens.len(), rows, "Invalid tokens deleted.");
            }
            // A missing table or a bad column will not heal: drop those; a
            // lost connection or a timeout (a lock held too long) may: keep
            // them for the next flush.
            Err(e) if transient(&e, &client) => {
                warn!(%table, error = %e, "Invalid tokens not deleted; will retry.");
                failed.insert(table, tokens);
            }
            Err(e) => warn!(%table, error = %e, "Invalid tokens not deleted."),
        }
    }
    // After a failure the connection's state is unknown: start afresh.
    let client = failed.is_empty().then_some(client);
    Flushed {
        client,
        failed,
        reached: true,
    }
}

/// Whether a failed statement may succeed later: the connection was lost,
/// or the statement ran out of time (a lock held too long), on either side.
fn transient(error: &DbError, client: &Client) -> bool {
    use tokio_postgres::error::SqlState;
    match error {
        DbError::Timeout(_) => true,
        DbError::Pg(e) => {
            client.is_closed()
                || e.code().is_some_and(|c| {
                    [SqlState::QUERY_CANCELED, SqlState::LOCK_NOT_AVAILABLE].contains(c)
                })
        }
    }
}

/// `query` within [`STATEMENT_TIMEOUT`] (plus a margin for the server's own
/// `statement_timeout` to answer first).
async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    let limit = STATEMENT_TIMEOUT + Duration::from_secs(5);
    tokio::time::timeout(limit, query)
        .await
        .map_err(|_| DbError::Timeout(limit))?
        .map_err(DbError::Pg)
}

/// A connection with every wait bounded: connecting, each statement (on
/// the server), and a peer that went silent (TCP keepalives).
async fn connect(url: &str) -> Result<Client, DbError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| DbError::Timeout(CONNECT_TIMEOUT))??;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "PostgreSQL connection ended.");
        }
    });
    let set = format!("SET statement_timeout = {}", STATEMENT_TIMEOUT.as_millis());
    bounded(client.batch_execute(&set)).await?;
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

impl TokenTable {
    pub(crate) fn new(config: &InvalidTokensConfig) -> TokenTable {
        TokenTable {
            url: config.postgres_url.clone(),
            template: config.table.clone(),
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// `(user_id, token)` of every device of `users` for `route`, by user
    /// then token, at most `limit + 1` (one more tells the caller it cut).
    pub(crate) async fn of_users(
        &self,
        route: &Route,
        users: &[String],
        limit: usize,
    ) -> Result<Vec<(String, String)>, DbError> {
        let mut client = self.client.lock().await;
        let live = match client.take() {
            Some(c) if !c.is_closed() => c,
            _ => connect(&self.url).await?,
        };
        let sql = format!(
            "SELECT DISTINCT user_id::text, token FROM {} WHERE user_id::text = ANY($1) \
             ORDER BY 1, 2 LIMIT {}",
            quoted(&table(&self.template, route)),
            limit + 1
        );
        let rows = bounded(live.query(&sql, &[&users])).await;
        // A statement cut short by the client leaves the connection unusable.
        if !matches!(rows, Err(DbError::Timeout(_))) {
            *client = Some(live);
        }
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
    use crate::Platform;
    use herald_testkit::postgres::Postgres;

    const STEP: Duration = Duration::from_secs(20);

    /// Waits (bounded) until `condition` holds, checking every few ms: no
    /// signal crosses from the batcher or from PostgreSQL.
    async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + STEP;
        while !condition().await {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_table_holds_up_no_push_and_its_tokens_go_once_free() {
        let pg = Postgres::start();
        pg.psql(
            "CREATE TABLE game_apns (id serial PRIMARY KEY, user_id text, token text NOT NULL)",
        );
        // More than the channel holds, so a batcher stuck on the lock
        // would have to make `delete` wait (or drop tokens).
        let chunk = CHANNEL / 2;
        let total = 4 * chunk;
        pg.psql(&format!(
            "INSERT INTO game_apns (token) SELECT 'dead-' || i FROM generate_series(0, {}) i; \
             INSERT INTO game_apns (token) VALUES ('alive')",
            total - 1
        ));
        let (locker, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        locker
            .batch_execute("BEGIN; LOCK TABLE game_apns IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let config = InvalidTokensConfig {
            postgres_url: pg.url(),
            batch: 100,
            flush_interval: Duration::from_millis(50),
            ..InvalidTokensConfig::default()
        };
        let (tokens, task) = InvalidTokens::spawn(&config);
        let route = Route {
            app: "game".into(),
            platform: Platform::Apns,
        };
        // Asked from another session: the locker's transaction sees one
        // snapshot of pg_stat_activity.
        let waiting_on_lock = async || {
            pg.psql(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE%'",
            ) == "1"
        };
        let drained = async || tokens.tx.capacity() == CHANNEL;
        for c in 0..4 {
            for i in c * chunk..(c + 1) * chunk {
                tokens.delete(&route, &format!("dead-{i}"));
            }
            if c == 0 {
                until("a DELETE waits on the lock", waiting_on_lock).await;
            }
            // The batcher takes tokens while its DELETE waits.
            until("the batcher took every token", drained).await;
        }
        assert!(waiting_on_lock().await, "the DELETE still waits");

        locker.batch_execute("ROLLBACK").await.unwrap();
        until("every dead token deleted", async || {
            pg.psql("SELECT token FROM game_apns") == "alive"
        })
        .await;
        tokens.close();
        tokio::time::timeout(STEP, task).await.unwrap().unwrap();
    }

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
