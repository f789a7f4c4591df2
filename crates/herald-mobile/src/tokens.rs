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
use tokio_postgres::types::Type;
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
    /// Table and token pairs for the batcher; a full channel drops the token instead of waiting.
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
    /// The connection, when every statement succeeded; `None` opens a new one next time.
    client: Option<Client>,
    /// Tokens per table to try again in the next flush.
    failed: Pending,
    /// Whether the database answered at all; if not, only the interval starts the next flush.
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
/// The app goes in lower case: the seed names the table unquoted, which
/// PostgreSQL folds, so topic `push-MyGame_apns` means table `mygame_apns`.
fn table(template: &str, route: &Route) -> String {
    template
        .replace("{app}", &route.app.to_lowercase())
        .replace("{platform}", route.platform.as_str())
}

/// Reads the apps' token tables.
pub(crate) struct TokenTable {
    /// The database, as `tokio-postgres` takes it.
    url: String,
    /// `{app}` and `{platform}` are replaced to name the table.
    template: String,
    /// One connection, opened on first use and again after it fails.
    connection: tokio::sync::Mutex<Option<Connection>>,
}

/// A connection and what it learnt of the tables' `user_id` columns; a new
/// connection learns them again.
struct Connection {
    /// The session the lookups run on.
    client: Client,
    /// Each table's `user_id` type, by quoted table name; forgotten when a lookup there fails.
    user_ids: HashMap<String, UserId>,
}

/// The type of a table's `user_id` column, as far as the lookup cares: the
/// ids are compared in the column's own type, so an index on it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserId {
    /// `text` or `varchar`: compared as text.
    Text,
    Uuid,
    Int2,
    Int4,
    Int8,
    /// Anything else: compared as text (`user_id::text`), which no index
    /// on the column serves.
    Other,
}

impl UserId {
    fn of(ty: &Type) -> UserId {
        [
            (Type::TEXT, UserId::Text),
            (Type::VARCHAR, UserId::Text),
            (Type::UUID, UserId::Uuid),
            (Type::INT2, UserId::Int2),
            (Type::INT4, UserId::Int4),
            (Type::INT8, UserId::Int8),
        ]
        .into_iter()
        .find_map(|(known, user_id)| (*ty == known).then_some(user_id))
        .unwrap_or(UserId::Other)
    }

    /// Whether a user id can match: it is the text form PostgreSQL gives a
    /// value of the column's type (`user_id::text`). Users were always
    /// matched on that form, so an id written otherwise (`007` for 7, an
    /// upper-case or unhyphenated UUID) matches no row, as before; and
    /// only such ids reach the cast to the column's type, which cannot fail.
    fn matches(self, id: &str) -> bool {
        fn canonical<T: std::str::FromStr + ToString>(id: &str) -> bool {
            id.parse::<T>().is_ok_and(|n| n.to_string() == id)
        }
        match self {
            UserId::Text | UserId::Other => true,
            UserId::Uuid => {
                id.len() == 36
                    && id.char_indices().all(|(i, c)| match i {
                        8 | 13 | 18 | 23 => c == '-',
                        _ => matches!(c, '0'..='9' | 'a'..='f'),
                    })
            }
            UserId::Int2 => canonical::<i16>(id),
            UserId::Int4 => canonical::<i32>(id),
            UserId::Int8 => canonical::<i64>(id),
        }
    }

    /// The `WHERE` clause for ids in `$1` (`text[]`).
    fn condition(self) -> &'static str {
        match self {
            UserId::Text => "user_id = ANY($1::text[])",
            UserId::Uuid => "user_id = ANY($1::text[]::uuid[])",
            UserId::Int2 => "user_id = ANY($1::text[]::int2[])",
            UserId::Int4 => "user_id = ANY($1::text[]::int4[])",
            UserId::Int8 => "user_id = ANY($1::text[]::int8[])",
            UserId::Other => "user_id::text = ANY($1::text[])",
        }
    }
}

impl TokenTable {
    pub(crate) fn new(config: &InvalidTokensConfig) -> TokenTable {
        TokenTable {
            url: config.postgres_url.clone(),
            template: config.table.clone(),
            connection: tokio::sync::Mutex::new(None),
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
        let mut connection = self.connection.lock().await;
        let mut live = match connection.take() {
            Some(c) if !c.client.is_closed() => c,
            _ => Connection {
                client: connect(&self.url).await?,
                user_ids: HashMap::new(),
            },
        };
        let table = quoted(&table(&self.template, route));
        let rows = lookup(&mut live, &table, users, limit).await;
        // A statement cut short by the client leaves the connection unusable.
        if !matches!(rows, Err(DbError::Timeout(_))) {
            if rows.is_err() {
                // The table may have changed (or gone): learn it again.
                live.user_ids.remove(&table);
            }
            *connection = Some(live);
        }
        rows
    }
}

/// [`TokenTable::of_users`] on `live`, `table` quoted.
async fn lookup(
    live: &mut Connection,
    table: &str,
    users: &[String],
    limit: usize,
) -> Result<Vec<(String, String)>, DbError> {
    let user_id = match live.user_ids.get(table) {
        Some(&known) => known,
        None => {
            let sql = format!("SELECT user_id FROM {table} LIMIT 0");
            let statement = bounded(live.client.prepare(&sql)).await?;
            let known = UserId::of(statement.columns()[0].type_());
            live.user_ids.insert(table.to_owned(), known);
            known
        }
    };
    let ids: Vec<&str> = users
        .iter()
        .map(String::as_str)
        .filter(|id| user_id.matches(id))
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // An operator's table may lack `NOT NULL` on `token`, or keep it in
    // another type: rows without a token are skipped, the rest read as text.
    let sql = format!(
        "SELECT DISTINCT user_id::text, token::text FROM {table} \
         WHERE {} AND token IS NOT NULL ORDER BY 1, 2 LIMIT {}",
        user_id.condition(),
        limit + 1
    );
    Ok(bounded(live.client.query(&sql, &[&ids]))
        .await?
        .iter()
        .filter_map(|row| Some((row.try_get(0).ok()?, row.try_get(1).ok()?)))
        .collect())
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

    /// A user's devices are found through an index on `user_id`, whatever
    /// its type, never by reading the whole table; and the ids that match
    /// are those written as PostgreSQL writes the type (`user_id::text`),
    /// the rest matching nothing rather than failing the lookup.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn users_are_looked_up_through_the_user_id_index() {
        let pg = Postgres::start();
        // The planner then takes an index whenever one can serve.
        pg.psql("ALTER DATABASE postgres SET enable_seqscan = off");
        for (app, ty, rows, filler) in [
            (
                "uuid",
                "uuid",
                "('9e558649-9c23-469d-a11c-59b05813e3d5', 'a1'), \
                 ('9e558649-9c23-469d-a11c-59b05813e3d5', 'a2'), \
                 ('57be9009-e616-42c6-9cfe-505508ede2d0', 'b1'), \
                 ('4223171e-c665-4612-9edd-485f229240bf', 'c1')",
                "gen_random_uuid()",
            ),
            (
                "int",
                "bigint",
                "(7, 'seven'), (42, 'forty-two')",
                "1000 + i",
            ),
            (
                "text",
                "text",
                "('u1', 't1'), ('U1', 't2')",
                "'filler-' || i",
            ),
        ] {
            pg.psql(&format!(
                "CREATE TABLE {app}_apns (id serial PRIMARY KEY, user_id {ty}, \
                 token text NOT NULL); \
                 INSERT INTO {app}_apns (user_id, token) VALUES {rows}; \
                 INSERT INTO {app}_apns (user_id, token) \
                 SELECT {filler}, 'filler-' || i FROM generate_series(1, 2000) i; \
                 CREATE INDEX {app}_user_id ON {app}_apns (user_id); \
                 ANALYZE {app}_apns"
            ));
        }
        // `(table, sequential scans, scans of the user_id index)`; building
        // the index read the table, so they count from here.
        let scans = || -> Vec<(String, u64, u64)> {
            pg.psql(
                "SELECT t.relname, t.seq_scan, i.idx_scan \
                 FROM pg_stat_user_tables t JOIN pg_stat_user_indexes i USING (relid) \
                 WHERE i.indexrelname LIKE '%_user_id' ORDER BY 1",
            )
            .lines()
            .map(|line| {
                let [table, seq, idx] = line.split('|').collect::<Vec<_>>()[..] else {
                    panic!("{line}")
                };
                (table.into(), seq.parse().unwrap(), idx.parse().unwrap())
            })
            .collect()
        };
        // An operator's table may allow a row without a token: skipped.
        pg.psql(
            "ALTER TABLE int_apns ALTER COLUMN token DROP NOT NULL; \
             INSERT INTO int_apns (user_id, token) VALUES (7, NULL)",
        );
        let before = scans();
        assert_eq!(before.len(), 3, "{before:?}");

        let table = TokenTable::new(&InvalidTokensConfig {
            postgres_url: pg.url(),
            ..InvalidTokensConfig::default()
        });
        let of_users = async |app: &str, users: &[&str]| {
            let route = Route {
                app: app.into(),
                platform: Platform::Apns,
            };
            let users: Vec<String> = users.iter().map(|&u| u.into()).collect();
            table.of_users(&route, &users, 100).await.unwrap()
        };
        let pairs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|&(u, t)| (u.into(), t.into())).collect()
        };
        let uuid = "9e558649-9c23-469d-a11c-59b05813e3d5";
        let found = of_users(
            "uuid",
            &[
                "not-a-uuid",
                uuid,
                "",
                "4223171E-C665-4612-9EDD-485F229240BF",
                "57be9009e61642c69cfe505508ede2d0",
                "{57be9009-e616-42c6-9cfe-505508ede2d0}",
                "57be9009-e616-42c6-9cfe-505508ede2d0x",
            ],
        )
        .await;
        assert_eq!(found, pairs(&[(uuid, "a1"), (uuid, "a2")]));
        let found = of_users(
            "int",
            &["007", "7", "+42", "42 ", "x", "99999999999999999999", "-0"],
        )
        .await;
        assert_eq!(found, pairs(&[("7", "seven")]));
        let found = of_users("text", &["nope", "u1"]).await;
        assert_eq!(found, pairs(&[("u1", "t1")]));
        // Nothing to look up.
        assert_eq!(of_users("uuid", &["x", "y"]).await, pairs(&[]));
        // Closing the connection makes its backend report its scans.
        drop(table);

        until("every table's scans are counted", async || {
            scans().iter().zip(&before).all(|(now, then)| now != then)
        })
        .await;
        // Scans of the index (one per id, in a btree), and no sequential one.
        let after = scans();
        for ((table, seq_before, idx_before), (_, seq, idx)) in before.iter().zip(&after) {
            assert!(
                *seq == *seq_before && idx > idx_before,
                "{table} was read through its index only: {before:?} then {after:?}"
            );
        }
    }

    #[test]
    fn an_apps_table_is_named_as_the_seed_names_it_unquoted() {
        let route = crate::topic::route("push-MyGame_apns_single").unwrap();
        assert_eq!(table("{app}_{platform}", &route), "mygame_apns");
        assert_eq!(table("Tokens.{app}", &route), "Tokens.mygame");
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
