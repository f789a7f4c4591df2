//! The Lua scripts. Each touches only keys of one channel (one hash tag), so
//! it runs atomically on the one cluster node that owns the channel.

use std::sync::LazyLock;

use redis::Script;

/// Sequences, stores and broadcasts one message, atomically.
///
/// The offset comes from `HINCRBY`, so every node sees one sequence. When the
/// metadata is new (first publish, or it expired or Redis lost it) the channel
/// gets the caller's fresh epoch and any older history is dropped: offsets
/// restart at 1, and the new epoch tells clients their positions are void.
/// (After [`RENEW_EPOCH`] the metadata has an epoch at offset 0: kept.)
///
/// The publish time is assigned with the offset, in Redis' clock (no node's):
/// now, or the channel's previous time (kept in the metadata) + 1 ms when
/// that is later, as [`next_publish_time`](herald_core::message::next_publish_time)
/// does on one node. So a channel's times grow with its offsets and never
/// repeat, whichever nodes publish.
///
/// KEYS: meta hash, history stream, subscriber-count hash.
/// ARGV: body, pub/sub channel, `PUBLISH`|`SPUBLISH`, fresh epoch,
/// meta ttl (s), history max length (0: none), history ttl (s),
/// exact-trim threshold.
///
/// Returns `{offset, epoch, subscribers}` where `subscribers` sums the
/// unexpired per-node counts (expired ones are removed on the way).
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local meta = redis.call('HMGET', KEYS[1], 'e', 't')
local epoch = meta[1]
local t = redis.call('TIME')
local time = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
else
  local last = tonumber(meta[2])
  if last and time <= last then time = last + 1 end
end
time = string.format('%d', time)
redis.call('HSET', KEYS[1], 't', time)
redis.call('EXPIRE', KEYS[1], ARGV[5])

local frame = 'H2 ' .. string.format('%d', offset) .. ' ' .. epoch .. ' ' .. time .. ' ' .. ARGV[1]

local max_len = tonumber(ARGV[6])
if max_len > 0 then
  local trim = '~'
  if max_len < tonumber(ARGV[8]) then trim = '=' end
  redis.call('XADD', KEYS[2], 'MAXLEN', trim, max_len,
    string.format('%d-0', offset), 'm', frame)
  redis.call('EXPIRE', KEYS[2], ARGV[7])
end

{SUM_COUNTS}

redis.call(ARGV[3], ARGV[2], frame)
return {{offset, epoch, subscribers}}
"#
    ))
});

/// Starts a channel over in a new epoch at offset 0, with its history
/// dropped, if it is still in the epoch a node found Redis lost writes of
/// (`subscriber::catch_up`): Redis reused offsets that node had delivered,
/// so the old epoch's positions mean different messages to different
/// clients. Of nodes finding the loss at once, the first renews the epoch
/// and the others see it renewed.
///
/// KEYS: meta hash, history stream. ARGV: the lossy epoch, fresh epoch,
/// meta ttl (s).
///
/// Returns 1 when it renewed the epoch, 0 when the channel had moved on.
pub(crate) static RENEW_EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'e', ARGV[2], 'o', 0)
redis.call('DEL', KEYS[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"#,
    )
});

/// Below this history length trimming is exact (`MAXLEN =`); above it
/// approximate (`MAXLEN ~`), which trims whole stream nodes and is cheaper.
pub(crate) const EXACT_TRIM_BELOW: u64 = 1_000;

/// Reads history: the epoch, the last offset, and entries.
///
/// KEYS: meta hash, history stream. ARGV: `since` offset (empty: the newest
/// entries, newest first), count.
///
/// Returns `{epoch, last_offset, entries}`; `epoch` is empty when the channel
/// has no metadata.
pub(crate) static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then return {'', 0, {}} end
local last = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local entries
if ARGV[2] == '0' then
  entries = {}
elseif ARGV[1] == '' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
else
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
return {epoch, last, entries}
"#,
    )
});

/// Sets (or with count 0 removes) this node's subscriber count for a channel,
/// stamped with an expiry in Redis' own clock so node clocks do not matter.
///
/// KEYS: subscriber-count hash. ARGV: node id, count, ttl (ms).
pub(crate) static SET_COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[2] == '0' then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. string.format('%d', now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#,
    )
});

/// Counts a join (`+1`) or a leave (`-1`) into a node's presence ledger,
/// dropping the field at zero, and keeps the ledger from expiring.
///
/// KEYS: the ledger. ARGV: field, delta, ttl (ms).
pub(crate) static COUNT_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
"#,
    )
});

/// Cluster-wide stats of one channel, read atomically.
///
/// KEYS: meta hash, history stream, subscriber-count hash.
///
/// Returns `{epoch, last_offset, stored, subscribers}`; `epoch` is empty when
/// the channel has no metadata.
pub(crate) static STATS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"
local epoch = redis.call('HGET', KEYS[1], 'e') or ''
local last = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local stored = redis.call('XLEN', KEYS[2])
{SUM_COUNTS}
return {{epoch, last, stored, subscribers}}
"#
    ))
});

/// Lua: sums the unexpired per-node counts of hash `KEYS[3]` into
/// `subscribers`, deleting expired entries (in Redis' own clock).
const SUM_COUNTS: &str = r#"local subscribers = 0
local counts = redis.call('HGETALL', KEYS[3])
if #counts > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for i = 1, #counts, 2 do
    local n, expires = string.match(counts[i + 1], '^(%d+):(%d+)$')
    if n and tonumber(expires) > now then
      subscribers = subscribers + tonumber(n)
    else
      redis.call('HDEL', KEYS[3], counts[i])
    end
  end
end"#;
