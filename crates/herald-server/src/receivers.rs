//! Receiver keys: let a connection that cannot talk back (Server-Sent
//! Events) acknowledge targeted messages over HTTP.
//!
//! An identified SSE connection is told its key, `<conn id>.<tag>`, where the
//! tag is an HMAC of the id under a per-process secret. `POST /api/v1/ack`
//! checks the tag, so only the holder of the stream can ack for it, and no
//! table of keys is kept: a key is void once its connection is gone because
//! the directory then knows no such connection.

use herald_core::ConnId;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::same_secret;

/// Hex digits of the tag: 128 bits.
const TAG_HEX: usize = 32;

/// Issues and checks receiver keys.
pub(crate) struct ReceiverKeys {
    /// Drawn at start; keys die with the process, as its connections do.
    secret: [u8; 32],
}

impl ReceiverKeys {
    pub(crate) fn new() -> Self {
        Self {
            secret: rand::random(),
        }
    }

    /// The key of connection `conn`.
    pub(crate) fn issue(&self, conn: ConnId) -> String {
        format!("{conn}.{}", self.tag(conn))
    }

    /// The connection `key` was issued for, if it was issued here.
    pub(crate) fn verify(&self, key: &str) -> Option<ConnId> {
        let (conn, tag) = key.split_once('.')?;
        let conn: ConnId = conn.parse().ok()?;
        same_secret(tag.as_bytes(), self.tag(conn).as_bytes()).then_some(conn)
    }

    fn tag(&self, conn: ConnId) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(&conn.to_be_bytes());
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
    fn keys_verify_only_for_their_connection_and_process() {
        let keys = ReceiverKeys::new();
        let key = keys.issue(42);
        assert_eq!(keys.verify(&key), Some(42));
        let forged = key.replacen("42.", "43.", 1);
        assert_eq!(keys.verify(&forged), None);
        assert_eq!(ReceiverKeys::new().verify(&key), None, "another process");
        for bad in ["", "42", "42.", "x.abc", &key[..key.len() - 1]] {
            assert_eq!(keys.verify(bad), None, "{bad:?}");
        }
    }
}
