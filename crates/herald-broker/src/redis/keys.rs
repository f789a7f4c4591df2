//! Redis key and pub/sub channel names.
//!
//! Everything about one channel shares the hash tag `{app/name}`, so on a
//! cluster its metadata, history stream, subscriber counts and sharded pub/sub
//! channel all live in one slot and one Lua script can touch them all.
//! `/` cannot appear in a channel name, so `app/name` is unambiguous even when
//! the app contains `/` or `:`.
//!
//! | name                        | kind    | holds                                  |
//! |-----------------------------|---------|----------------------------------------|
//! | `P:{app/name}`              | pub/sub | the channel's messages                 |
//! | `P:{app/name}:m`            | hash    | `o` last offset, `e` epoch             |
//! | `P:{app/name}:h`            | stream  | history, entry id `<offset>-0`         |
//! | `P:{app/name}:s`            | hash    | node id → `count:expires_ms`           |
//! | `P:node:{id}`               | string  | node liveness, refreshed with a TTL    |
//! | `P:node:{id}:direct`        | pub/sub | node-to-node messages                  |
//! | `P:node:{id}:presence`      | hash    | the node's announced joins, per user   |
//! | `P:{presence}:nodes`        | set     | nodes that keep a presence ledger      |
//! | `P:echo:{tag}:id`           | pub/sub | node `id`'s pub/sub self-checks        |
//! | `P:{rec:kind}`              | hash    | shared records of one kind             |
//! | `P:lease:{name}`            | string  | a lease's holder, with a TTL           |

use std::sync::Arc;

use herald_core::ChannelKey;

/// Builds names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// Separates Herald deployments sharing one Redis (`P` above).
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The pub/sub channel carrying `channel`'s messages.
    pub(crate) fn pubsub(&self, channel: &ChannelKey) -> String {
        format!("{}:{{{}/{}}}", self.prefix, channel.app(), channel.name())
    }

    /// The hash holding `channel`'s last offset and epoch.
    pub(crate) fn meta(&self, channel: &ChannelKey) -> String {
        self.pubsub(channel) + ":m"
    }

    /// The stream holding `channel`'s history.
    pub(crate) fn history(&self, channel: &ChannelKey) -> String {
        self.pubsub(channel) + ":h"
    }

    /// The hash holding each node's subscriber count for `channel`.
    pub(crate) fn subscribers(&self, channel: &ChannelKey) -> String {
        self.pubsub(channel) + ":s"
    }

    /// The key whose presence says node `id` is alive.
    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}:node:{{{id}}}", self.prefix)
    }

    /// The set of nodes with a local connection that has identity pair
    /// `dim=value`. Every identity key shares one hash tag, so a filter's
    /// sets can be intersected in one command on a cluster too.
    pub(crate) fn ident(&self, dim: &str, value: &str) -> String {
        format!(
            "{}:{{ident}}:d:{}={}",
            self.prefix,
            dim.len(),
            [dim, value].concat()
        )
    }

    /// The set of nodes with any identified connection.
    pub(crate) fn ident_nodes(&self) -> String {
        format!("{}:{{ident}}:nodes", self.prefix)
    }

    /// The set of pair keys ([`Keys::ident`]) node `id` wrote itself to:
    /// whoever finds the node dead removes it from all of them.
    pub(crate) fn ident_of_node(&self, id: &str) -> String {
        format!("{}:{{ident}}:n:{id}", self.prefix)
    }

    /// The pub/sub channel node `id` listens on for direct messages.
    pub(crate) fn node_direct(&self, id: &str) -> String {
        self.node(id) + ":direct"
    }

    /// The hash of node `id`'s joins not yet left: channel and user → connections.
    pub(crate) fn presence_ledger(&self, id: &str) -> String {
        self.node(id) + ":presence"
    }

    /// The set of nodes that keep a presence ledger.
    pub(crate) fn presence_nodes(&self) -> String {
        format!("{}:{{presence}}:nodes", self.prefix)
    }

    /// A `SCAN MATCH` pattern for the metadata and count hashes of `app`'s
    /// channels: a channel has one or both while it has a position or
    /// subscribers.
    pub(crate) fn channel_pattern(&self, app: &str) -> String {
        format!(
            "{}:{{{}/*}}:[ms]",
            glob_escape(&self.prefix),
            glob_escape(app)
        )
    }

    /// The channel a key from [`Keys::channel_pattern`] belongs to.
    pub(crate) fn channel_of(&self, key: &[u8], app: &Arc<str>) -> Option<ChannelKey> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?;
        let rest = rest.strip_prefix(&**app)?.strip_prefix('/')?;
        let name = rest
            .strip_suffix("}:m")
            .or_else(|| rest.strip_suffix("}:s"))?;
        ChannelKey::new(app, name).ok()
    }

    /// The hash holding the records of `kind`.
    pub(crate) fn records(&self, kind: &str) -> String {
        format!("{}:{{rec:{kind}}}", self.prefix)
    }

    /// The key holding lease `name`.
    pub(crate) fn lease(&self, name: &str) -> String {
        format!("{}:lease:{{{name}}}", self.prefix)
    }

    /// An echo channel of node `id`; `tag` picks its slot on a cluster.
    pub(crate) fn echo(&self, id: &str, tag: u32) -> String {
        format!("{}:echo:{{{tag}}}:{id}", self.prefix)
    }

    /// Whether `name` is an echo channel (of any node).
    pub(crate) fn is_echo(&self, name: &[u8]) -> bool {
        name.strip_prefix(self.prefix.as_bytes())
            .is_some_and(|rest| rest.starts_with(b":echo:"))
    }
}

/// `s` with Redis glob metacharacters escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag).
/// Used by tests and diagnostics to see where a channel lands.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&c| c == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&c| c == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channels_names_share_one_slot() {
        let keys = Keys::new("herald");
        let ch = ChannelKey::new(&Arc::from("app"), "room:1").unwrap();
        assert_eq!(keys.pubsub(&ch), "herald:{app/room:1}");
        let slots: Vec<u16> = [
            keys.pubsub(&ch),
            keys.meta(&ch),
            keys.history(&ch),
            keys.subscribers(&ch),
        ]
        .iter()
        .map(|k| slot(k.as_bytes()))
        .collect();
        assert!(slots.iter().all(|&s| s == slots[0]), "{slots:?}");
    }

    #[test]
    fn listed_keys_map_back_to_channels() {
        let keys = Keys::new("h*");
        let app: Arc<str> = Arc::from("app");
        let ch = ChannelKey::new(&app, "room:1").unwrap();
        assert_eq!(keys.channel_pattern("app"), "h\\*:{app/*}:[ms]");
        for key in [keys.meta(&ch), keys.subscribers(&ch)] {
            assert_eq!(keys.channel_of(key.as_bytes(), &app), Some(ch.clone()));
        }
        assert_eq!(keys.channel_of(keys.history(&ch).as_bytes(), &app), None);
        let other = Arc::from("ap");
        assert_eq!(keys.channel_of(keys.meta(&ch).as_bytes(), &other), None);
    }

    #[test]
    fn slot_matches_redis() {
        // Reference values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"123456789"), 0x31C3); // the CRC16/XMODEM check value
    }
}
