//! TCP connections to the server under test, optionally from a chosen loopback source address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use crate::error::{BenchError, Result};

/// Where a load test may send traffic: loopback only (127.0.0.0/8 or ::1).
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Resolved server address.
    pub(crate) addr: SocketAddr,
    /// `host:port` as given, for the `Host` header and URLs.
    pub(crate) authority: String,
}

impl Endpoint {
    /// Accepts `http://HOST:PORT` or `ws://HOST:PORT` (a trailing path is ignored); HOST must be a
    /// loopback IP literal or `localhost`.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let rest = ["http://", "ws://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))
            .ok_or_else(|| {
                BenchError::Config(format!("--url must start with http:// or ws://: {url}"))
            })?;
        let authority = rest.split('/').next().unwrap_or_default().to_string();
        let addr: SocketAddr = match authority.strip_prefix("localhost:") {
            Some(port) => SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                port.parse()
                    .map_err(|_| BenchError::Config(format!("bad port in {url}")))?,
            ),
            None => authority
                .parse()
                .map_err(|_| BenchError::Config(format!("--url needs IP:PORT: {url}")))?,
        };
        if !addr.ip().is_loopback() {
            return Err(BenchError::Config(format!(
                "refusing non-loopback target {addr}: load tests run against 127.0.0.0/8 only"
            )));
        }
        Ok(Endpoint { addr, authority })
    }

    pub(crate) fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.authority)
    }

    pub(crate) fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.authority)
    }
}

/// Connects to `addr`, first binding to `source` when given, so more than one source address's
/// worth of ephemeral ports (~28k each) can be used.
///
/// The bound socket sets `SO_REUSEADDR`: without it, a port still held by a TIME_WAIT socket
/// from an earlier run on the same source address conflicts at bind time, and once most of the
/// range was in TIME_WAIT every bind searched it: the generator burnt tens of CPU seconds in
/// the kernel and connected at a few hundred per second. With it, the port is free to bind and
/// only the full 4-tuple must be unique at connect time.
pub(crate) async fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `count` consecutive IPv4 addresses starting at `base`.
pub(crate) fn address_range(base: Ipv4Addr, count: u32) -> Vec<Ipv4Addr> {
    let start = u32::from(base);
    (0..count)
        .map(|i| Ipv4Addr::from(start.wrapping_add(i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        assert!(Endpoint::parse("http://127.0.0.1:8080").is_ok());
        assert!(Endpoint::parse("ws://127.0.0.5:80/x").is_ok());
        assert!(Endpoint::parse("http://localhost:9").is_ok());
        assert!(Endpoint::parse("http://[::1]:9").is_ok());
        assert!(Endpoint::parse("http://10.0.0.1:80").is_err());
        assert!(Endpoint::parse("http://8.8.8.8:80").is_err());
        assert!(Endpoint::parse("https://127.0.0.1:80").is_err());
        let e = Endpoint::parse("http://127.0.0.1:8090/").expect("valid");
        assert_eq!(e.http("/pub/a"), "http://127.0.0.1:8090/pub/a");
        assert_eq!(e.ws("/sub/a"), "ws://127.0.0.1:8090/sub/a");
    }

    #[test]
    fn ranges() {
        assert_eq!(
            address_range(Ipv4Addr::new(127, 0, 0, 254), 3),
            vec![
                Ipv4Addr::new(127, 0, 0, 254),
                Ipv4Addr::new(127, 0, 0, 255),
                Ipv4Addr::new(127, 0, 1, 0)
            ]
        );
    }
}
