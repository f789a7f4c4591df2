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
}

/// Source ports the generator assigns itself when it binds: below the kernel's ephemeral range
/// (32768–60999 here), so they never collide with ports the kernel hands out.
pub(crate) const SOURCE_PORTS: std::ops::Range<u16> = 10_000..32_768;

/// Connects to `addr`, first binding to `source` (address and port) when given, so more than
/// one source address's worth of ports can be used.
///
/// The port is chosen by the caller, not by the kernel: a `bind` to port 0 searches the whole
/// port range for a port no other socket holds, and with ~10,000 sockets (or a previous run's
/// TIME_WAIT sockets) on the range that search burnt tens of CPU seconds in the kernel and cut
/// the connect rate to a few hundred per second. `SO_REUSEADDR` lets a port still held by a
/// TIME_WAIT socket be bound again; the 4-tuple is checked at connect time. If the chosen port
/// is taken anyway, the kernel picks one.
pub(crate) async fn connect(
    addr: SocketAddr,
    source: Option<(Ipv4Addr, u16)>,
) -> Result<TcpStream> {
    let new_socket = || {
        if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    };
    let mut socket = new_socket()?;
    if let Some((ip, port)) = source {
        socket.set_reuseaddr(true)?;
        if socket.bind(SocketAddr::new(IpAddr::V4(ip), port)).is_err() {
            socket = new_socket()?;
            socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
        }
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Source address and port for the `local`-th connection of a worker spread over `sources`.
pub(crate) fn source_for(sources: &[Ipv4Addr], local: usize) -> Option<(Ipv4Addr, u16)> {
    if sources.is_empty() {
        return None;
    }
    let span = usize::from(SOURCE_PORTS.end - SOURCE_PORTS.start);
    let offset = (local / sources.len()) % span;
    let port = SOURCE_PORTS.start + u16::try_from(offset).unwrap_or(0);
    Some((sources[local % sources.len()], port))
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
        assert_eq!(e.authority, "127.0.0.1:8090");
    }

    #[test]
    fn sources_spread_over_addresses_then_ports() {
        let a = Ipv4Addr::new(127, 0, 0, 2);
        let b = Ipv4Addr::new(127, 0, 0, 3);
        assert_eq!(source_for(&[], 5), None);
        assert_eq!(source_for(&[a, b], 0), Some((a, 10_000)));
        assert_eq!(source_for(&[a, b], 1), Some((b, 10_000)));
        assert_eq!(source_for(&[a, b], 5), Some((b, 10_002)));
        assert_eq!(source_for(&[a], 22_768), Some((a, 10_000)));
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
