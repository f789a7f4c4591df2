//! Connections to a single Redis server or to a Redis Cluster, behind one type.
//!
//! Both are multiplexed: many requests are in flight on one socket (one per
//! cluster node), so a slow command never holds up the ones behind it.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::{
    AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo,
    RedisError, RedisFuture, RedisResult, Value,
};

use super::config::RedisConfig;

/// Where pub/sub pushes of one connection go: (connection generation, push).
pub(crate) type PushTx = tokio::sync::mpsc::UnboundedSender<(u64, PushInfo)>;

/// One logical connection: a multiplexed server connection or a cluster
/// connection. Cheap to clone; clones share the sockets.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects as `config` says. With `push`, the connection speaks RESP3 and
    /// forwards pub/sub messages tagged with `generation`.
    pub(crate) async fn open(
        config: &RedisConfig,
        cluster: bool,
        push: Option<(PushTx, u64)>,
    ) -> RedisResult<Self> {
        let timeout = config.timeout();
        let infos = connection_infos(config)?;
        let certs = tls_certificates(config)?;
        let sender = push.map(|(tx, generation)| {
            move |info: PushInfo| tx.send((generation, info)).map_err(|_| ())
        });
        if cluster {
            let mut builder = ClusterClientBuilder::new(infos)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            if let Some(sender) = sender {
                builder = builder
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(sender);
            }
            let client = builder.build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        } else {
            let mut info = infos
                .into_iter()
                .next()
                .expect("validated: one url at least");
            let mut conn_config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            if let Some(sender) = sender {
                let redis = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                info = info.set_redis_settings(redis);
                conn_config = conn_config.set_push_sender(sender);
            }
            let client = match certs {
                Some(certs) => Client::build_with_tls(info, certs)?,
                None => Client::open(info)?,
            };
            let conn = client
                .get_multiplexed_async_connection_with_config(&conn_config)
                .await?;
            Ok(Conn::Single(conn))
        }
    }

    /// PINGs every server this connection uses (each master of a cluster).
    pub(crate) async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Conn::Single(c) => redis::cmd("PING").query_async::<()>(c).await,
            Conn::Cluster(c) => {
                let all = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                c.route_command(redis::cmd("PING"), all).await.map(drop)
            }
        }
    }

    /// Subscribes to `channels`: plain pub/sub on one server, sharded pub/sub
    /// (one command per channel, since each may live on another node) on a
    /// cluster.
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channels).await,
            Conn::Cluster(c) => {
                let calls = channels.iter().map(|ch| {
                    let mut c = c.clone();
                    async move { c.ssubscribe(ch).await }
                });
                futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    /// The reverse of [`Conn::subscribe`].
    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(channels).await,
            Conn::Cluster(c) => {
                let calls = channels.iter().map(|ch| {
                    let mut c = c.clone();
                    async move { c.sunsubscribe(ch).await }
                });
                futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    /// The slot ranges of a cluster's masters: `(first, last, (host, port))`.
    pub(crate) async fn slot_ranges(&mut self) -> RedisResult<Vec<SlotRange>> {
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(self).await?;
        parse_slot_ranges(&reply)
    }

    /// Every key matching `pattern`, on every master; at most `limit`.
    pub(crate) async fn scan(&mut self, pattern: &str, limit: usize) -> RedisResult<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        let servers = match self {
            Conn::Single(_) => vec![None],
            Conn::Cluster(_) => {
                let mut masters: Vec<_> = self
                    .slot_ranges()
                    .await?
                    .into_iter()
                    .map(|(_, _, addr)| Some(addr))
                    .collect();
                masters.sort();
                masters.dedup();
                masters
            }
        };
        for server in servers {
            let mut cursor = 0u64;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let reply = match (&mut *self, &server) {
                    (Conn::Cluster(c), Some((host, port))) => {
                        let at = SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        };
                        c.route_command(cmd, RoutingInfo::SingleNode(at)).await?
                    }
                    (conn, _) => cmd.query_async(conn).await?,
                };
                let (next, batch): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 || keys.len() >= limit {
                    break;
                }
            }
        }
        keys.truncate(limit);
        Ok(keys)
    }

    /// The publish command that matches [`Conn::subscribe`].
    pub(crate) fn publish_command(&self) -> &'static str {
        match self {
            Conn::Single(_) => "PUBLISH",
            Conn::Cluster(_) => "SPUBLISH",
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A range of cluster slots and the address of the master serving it.
pub(crate) type SlotRange = (u16, u16, (String, u16));

/// Reads a `CLUSTER SLOTS` reply.
fn parse_slot_ranges(reply: &Value) -> RedisResult<Vec<SlotRange>> {
    let bad = || {
        RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected CLUSTER SLOTS reply",
        ))
    };
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(fields) = range else {
                return Err(bad());
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(bad());
            };
            let (Some(Value::BulkString(host)), Some(Value::Int(port))) =
                (master.first(), master.get(1))
            else {
                return Err(bad());
            };
            let number = |v: i64| u16::try_from(v).map_err(|_| bad());
            let host = String::from_utf8_lossy(host).into_owned();
            Ok((number(*start)?, number(*end)?, (host, number(*port)?)))
        })
        .collect()
}

/// Whether the server at the first URL runs in cluster mode.
pub(crate) async fn detect_cluster(config: &RedisConfig) -> RedisResult<bool> {
    let mut conn = Conn::open(config, false, None).await?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut conn)
        .await?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

/// The private CA to trust, when TLS is on and one is configured.
fn tls_certificates(config: &RedisConfig) -> RedisResult<Option<redis::TlsCertificates>> {
    if !config.tls {
        return Ok(None);
    }
    // rustls needs a process-wide crypto provider; an error only means one is
    // installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(path) = &config.tls_ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| {
        RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "cannot read tls_ca_file",
            format!("{}: {e}", path.display()),
        ))
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// The configured URLs with password and TLS applied.
fn connection_infos(config: &RedisConfig) -> RedisResult<Vec<redis::ConnectionInfo>> {
    config
        .urls
        .iter()
        .map(|url| {
            let url = match (config.tls, url.strip_prefix("redis://")) {
                (true, Some(rest)) => format!("rediss://{rest}"),
                _ => url.clone(),
            };
            let mut info = url.as_str().into_connection_info()?;
            if let Some(password) = &config.password
                && info.redis_settings().password().is_none()
            {
                let redis = info.redis_settings().clone().set_password(password);
                info = info.set_redis_settings(redis);
            }
            Ok(info)
        })
        .collect()
}

/// Whether `e` means the server could not be reached or did not answer in
/// time, as opposed to refusing the command.
pub(crate) fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::MasterDown
            )
        )
}

/// Bounds `fut` by `limit`, turning a timeout into an I/O timeout error.
pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis operation timed out",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: i64, end: i64, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ]),
        ])
    }

    #[test]
    fn cluster_slots_reply_is_read() {
        let reply = Value::Array(vec![range(0, 5460, 7000), range(5461, 10922, 7001)]);
        let local = |port| ("127.0.0.1".to_owned(), port);
        assert_eq!(
            parse_slot_ranges(&reply).unwrap(),
            vec![(0, 5460, local(7000)), (5461, 10922, local(7001))]
        );
        assert!(parse_slot_ranges(&Value::Int(1)).is_err());
        assert!(parse_slot_ranges(&Value::Array(vec![Value::Int(1)])).is_err());
        assert!(parse_slot_ranges(&Value::Array(vec![range(0, 70000, 7000)])).is_err());
    }
}
