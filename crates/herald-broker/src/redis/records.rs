//! Shared records and leases in Redis.
//!
//! The records of one kind live in one hash (`P:{rec:kind}`), each field
//! `id → created_ms:expires_ms:value` (`expires_ms` 0: never). Expiry is
//! judged in Redis' clock by small scripts, so nodes with skewed clocks
//! agree; expired fields are removed when a listing meets them.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{BrokerError, Record};
use redis::Script;

use super::Inner;
use super::conn::bounded;

/// Lua: `now`, Redis' clock in milliseconds, and `live(field)`.
const PRELUDE: &str = r#"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function live(v)
  local e = tonumber(string.match(v, '^%d+:(%d+):'))
  return e == 0 or e > now
end"#;

/// KEYS: the hash. ARGV: id, created_ms, ttl ms (empty: never), value.
/// Returns 1 if stored, 0 if a live record has the id.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{PRELUDE}
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and live(old) then return 0 end
local exp = 0
if ARGV[3] ~= '' then exp = now + tonumber(ARGV[3]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. string.format('%d', exp) .. ':' .. ARGV[4])
return 1"#
    ))
});

/// KEYS: the hash. ARGV: id. Returns the live field, or nil.
static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{PRELUDE}
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and live(v) then return v end
return false"#
    ))
});

/// KEYS: the hash. Returns `id, field, …` of the live records and removes
/// the expired ones.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{PRELUDE}
local all = redis.call('HGETALL', KEYS[1])
local out = {{}}
for i = 1, #all, 2 do
  if live(all[i + 1]) then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out"#
    ))
});

/// KEYS: the hash. ARGV: id. Removes the field; returns 1 if it was live.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{PRELUDE}
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if live(v) then return 1 end
return 0"#
    ))
});

pub(crate) async fn create(
    inner: &Inner,
    kind: &str,
    record: Record,
    ttl: Option<Duration>,
) -> Result<bool, BrokerError> {
    let mut call = CREATE.prepare_invoke();
    call.key(inner.keys.records(kind))
        .arg(&record.id)
        .arg(record.created_ms)
        .arg(ttl.map_or(String::new(), |t| t.as_millis().to_string()))
        .arg(record.value.as_ref());
    let mut conn = inner.ready_publisher()?;
    let stored: i64 = bounded(inner.config.timeout(), call.invoke_async(&mut conn))
        .await
        .map_err(|e| inner.failed(e))?;
    Ok(stored == 1)
}

pub(crate) async fn get(
    inner: &Inner,
    kind: &str,
    id: &str,
) -> Result<Option<Record>, BrokerError> {
    let mut call = GET.prepare_invoke();
    call.key(inner.keys.records(kind)).arg(id);
    let mut conn = inner.publisher_conn()?;
    let field: Option<Vec<u8>> = bounded(inner.config.timeout(), call.invoke_async(&mut conn))
        .await
        .map_err(|e| inner.failed(e))?;
    field.map(|f| decode(id.to_owned(), &f)).transpose()
}

pub(crate) async fn list(inner: &Inner, kind: &str) -> Result<Vec<Record>, BrokerError> {
    let mut call = LIST.prepare_invoke();
    call.key(inner.keys.records(kind));
    let mut conn = inner.publisher_conn()?;
    let flat: Vec<Vec<u8>> = bounded(inner.config.timeout(), call.invoke_async(&mut conn))
        .await
        .map_err(|e| inner.failed(e))?;
    let mut records = flat
        .chunks_exact(2)
        .map(|pair| decode(String::from_utf8_lossy(&pair[0]).into_owned(), &pair[1]))
        .collect::<Result<Vec<_>, _>>()?;
    herald_core::records::sort(&mut records);
    Ok(records)
}

pub(crate) async fn delete(inner: &Inner, kind: &str, id: &str) -> Result<bool, BrokerError> {
    let mut call = DELETE.prepare_invoke();
    call.key(inner.keys.records(kind)).arg(id);
    let mut conn = inner.ready_publisher()?;
    let removed: i64 = bounded(inner.config.timeout(), call.invoke_async(&mut conn))
        .await
        .map_err(|e| inner.failed(e))?;
    Ok(removed == 1)
}

/// `SET NX PX`: the lease is this node's until it expires.
pub(crate) async fn lease(inner: &Inner, name: &str, ttl: Duration) -> Result<bool, BrokerError> {
    let mut set = redis::cmd("SET");
    set.arg(inner.keys.lease(name))
        .arg(&inner.config.node_id)
        .arg("NX")
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64);
    let mut conn = inner.ready_publisher()?;
    let taken: Option<String> = bounded(inner.config.timeout(), set.query_async(&mut conn))
        .await
        .map_err(|e| inner.failed(e))?;
    Ok(taken.is_some())
}

/// A record from its hash field `created_ms:expires_ms:value`.
fn decode(id: String, field: &[u8]) -> Result<Record, BrokerError> {
    let bad = || BrokerError::Protocol(format!("redis: malformed record {id:?}"));
    let mut parts = field.splitn(3, |&b| b == b':');
    let (Some(created), Some(_expires), Some(value)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let created_ms = std::str::from_utf8(created)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(Record {
        value: Bytes::copy_from_slice(value),
        created_ms,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_decode_with_colons_in_the_value() {
        let r = decode("a".into(), b"17:0:{\"x\":\"1:2\"}").unwrap();
        assert_eq!(
            (r.created_ms, r.value.as_ref()),
            (17, &b"{\"x\":\"1:2\"}"[..])
        );
        assert!(decode("a".into(), b"17:0").is_err());
        assert!(decode("a".into(), b"x:0:v").is_err());
    }
}
