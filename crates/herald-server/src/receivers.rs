//! Receiver keys: let a connection that cannot talk back (Server-Sent
//! Events) acknowledge targeted messages over HTTP, on any node.
//!
//! An identified SSE connection is told its key, `<conn id>.<node>.<tag>`:
//! the tag is an HMAC of the id and node under `auth.receiver_secret` (or a
//! secret drawn at start, which only this process knows). `POST /api/v1/ack`
//! checks the tag, so only the holder of the stream can ack for it, and no
//! table of keys is kept: a key is void once its connection is gone, because
//! its node then knows no such connection. With a shared secret any node
//! accepts the key and forwards the ack to the connection's node.

use herald_core::ConnId;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::same_secret;

/// Hex digits of the tag: 128 bits.
const TAG_HEX: usize = 32;

/// Stands for "this process" when the broker links no other nodes.
const LOCAL: &str = "-";

/// Issues and checks receiver keys.
pub(crate) struct ReceiverKeys {
    /// The HMAC key: configured (shared by a cluster) or drawn at start.
    secret: Vec<u8>,
    /// This node's name in keys; `-` without a cluster broker.
    node: String,
}

/// Whose connection a key names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Receiver {
    /// The node holding the connection; `None` for this process.
    pub(crate) node: Option<String>,
    /// The connection's id on that node.
    pub(crate) conn: ConnId,
}

impl ReceiverKeys {
    pub(crate) fn new(secret: Option<&str>, node: Option<&str>) -> Self {
        Self {
            secret: secret.map_or_else(|| rand::random::<[u8; 32]>().to_vec(), |s| s.into()),
            node: node.unwrap_or(LOCAL).to_owned(),
        }
    }

    /// The key of this node's connection `conn`.
    pub(crate) fn issue(&self, conn: ConnId) -> String {
        format!("{conn}.{}.{}", self.node, self.tag(conn, &self.node))
    }

    /// The connection `key` names, if a node sharing this secret issued it.
    pub(crate) fn verify(&self, key: &str) -> Option<Receiver> {
        let mut parts = key.splitn(3, '.');
        let (conn, node, tag) = (parts.next()?, parts.next()?, parts.next()?);
        let conn: ConnId = conn.parse().ok()?;
        if !same_secret(tag.as_bytes(), self.tag(conn, node).as_bytes()) {
            return None;
        }
        let node = (node != LOCAL).then(|| node.to_owned());
        Some(Receiver { node, conn })
    }

    fn tag(&self, conn: ConnId, node: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(&conn.to_be_bytes());
        mac.update(node.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut hex = String::with_capacity(TAG_HEX);
        for b in &digest[..TAG_HEX / 2] {
            hex.push_str(&format!("{b:02x}"));
        }
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_only_for_their_connection_and_secret() {
        let keys = ReceiverKeys::new(None, None);
        let key = keys.issue(42);
        let local = Some(Receiver {
            node: None,
            conn: 42,
        });
        assert_eq!(keys.verify(&key), local);
        let forged = key.replacen("42.", "43.", 1);
        assert_eq!(keys.verify(&forged), None);
        assert_eq!(
            ReceiverKeys::new(None, None).verify(&key),
            None,
            "another process"
        );
        for bad in ["", "42", "42.-", "42.-.", "x.-.abc", &key[..key.len() - 1]] {
            assert_eq!(keys.verify(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_shared_secret_lets_every_node_read_every_nodes_keys() {
        let a = ReceiverKeys::new(Some("shared"), Some("node-a"));
        let b = ReceiverKeys::new(Some("shared"), Some("node-b"));
        let key = a.issue(7);
        let on_a = Some(Receiver {
            node: Some("node-a".into()),
            conn: 7,
        });
        assert_eq!(b.verify(&key), on_a);
        assert_eq!(
            a.verify(&key.replace("node-a", "node-b")),
            None,
            "node is signed"
        );
        let other = ReceiverKeys::new(Some("other"), Some("node-b"));
        assert_eq!(other.verify(&key), None);
    }
}
