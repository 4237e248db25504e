//! The Lua scripts that make claiming and settling safe when several daemons share a group.
//!
//! Redis has no redelivery timer: a consumer claims what others left idle (`XAUTOCLAIM`), and
//! two consumers may end up running one entry (a daemon that could not reach the server for a
//! while, whose entries were claimed meanwhile, still finishes them). What keeps that to one
//! final record is that every settle is checked, in the same script that applies it, against
//! the group's pending entries list: it applies only while the entry is still pending, owned
//! by this consumer, with the delivery count this daemon took it with (a claim bumps the
//! count, so a daemon that reuses its consumer name is told apart too). The loser's record is
//! dropped. A script runs atomically, so nothing can claim the entry between the check and
//! the `XADD` + `XACK`.

use redis::Script;

/// Claims entries idle longer than the claim time (from any consumer, this one included) and
/// returns each with its delivery count, which `XAUTOCLAIM` does not tell.
///
/// KEYS: events stream. ARGV: group, consumer, min idle (ms), cursor, count.
/// Returns `{next cursor, {{id, deliveries, {field, value, ...}}, ...}, deleted}`, `deleted`
/// being how many pending entries were gone from the stream (trimmed or deleted: `XAUTOCLAIM`
/// drops them from the pending list).
pub(crate) const CLAIM: &str = r"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
  local n = 1
  if p[1] then n = p[1][4] end
  out[#out + 1] = {e[1], n, e[2]}
end
local deleted = 0
if r[3] then deleted = #r[3] end
return {r[1], out, deleted}
";

/// Applies a batch of settles, each only if the entry is still this consumer's with the
/// delivery count given (see the module's documentation).
///
/// KEYS: events stream, results stream. ARGV: group, consumer, the first and the last entry
/// id of the batch, how many pending entries to look up at once, then four per operation:
/// its letter, entry id, delivery count, value.
/// - `R`: a final record: `XADD results * id <id> record <value>`, then `XACK`.
/// - `C`: a chunk line: `XADD results * id <id> chunk <value>`.
/// - `N`: hand back: `XCLAIM ... IDLE <value> JUSTID`, so it can be claimed (again) once it
///   has been idle for the claim time, i.e. after (claim time − value).
/// - `T`: touch: `XCLAIM ... JUSTID`, resetting its idle time (it is still being worked on).
///
/// Returns one integer per operation: 1 applied, 0 not (the entry moved on).
///
/// What the server spends per entry is what bounds one daemon, so the check is one
/// `XPENDING` of this consumer's entries between the first and last id (up to the number
/// given; an entry past it is looked up alone), and the acknowledgements are one `XACK` per
/// 256 records, sent before the script ends, and before it returns any error: a record
/// written is never left unacknowledged, which would write it again when the batch is
/// retried.
pub(crate) const APPLY: &str = r"
local group, consumer, limit = ARGV[1], ARGV[2], tonumber(ARGV[5])
local held = {}
local p = redis.call('XPENDING', KEYS[1], group, ARGV[3], ARGV[4], limit, consumer)
for _, e in ipairs(p) do held[e[1]] = e[4] end
local whole = #p < limit
local acks = {}
local function ack()
  if #acks > 0 then
    redis.call('XACK', KEYS[1], group, unpack(acks))
    acks = {}
  end
end
local out = {}
for i = 6, #ARGV, 4 do
  local op, id, n, v = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local have = held[id]
  if have == nil and not whole then
    local q = redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer)
    have = q[1] and q[1][4] or false
    held[id] = have
  end
  if have == n then
    local r
    if op == 'R' then
      r = redis.pcall('XADD', KEYS[2], '*', 'id', id, 'record', v)
    elseif op == 'C' then
      r = redis.pcall('XADD', KEYS[2], '*', 'id', id, 'chunk', v)
    elseif op == 'N' then
      r = redis.pcall('XCLAIM', KEYS[1], group, consumer, 0, id, 'IDLE', v, 'JUSTID')
    else
      r = redis.pcall('XCLAIM', KEYS[1], group, consumer, 0, id, 'JUSTID')
    end
    if type(r) == 'table' and r.err then
      ack()
      return r
    end
    if op == 'R' then
      acks[#acks + 1] = id
      held[id] = false
      if #acks == 256 then ack() end
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
ack()
return out
";

/// Deletes this consumer from the group if it has no pending entries (a clean stop), so
/// that stopped daemons do not pile up in `XINFO CONSUMERS`. `XGROUP DELCONSUMER` would drop
/// the pending entries of a consumer that has some: they would never be claimed.
///
/// KEYS: events stream. ARGV: group, consumer. Returns 1 if deleted.
pub(crate) const FORGET: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if p[1] then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// The three scripts, hashed once.
pub(crate) struct Scripts {
    pub claim: Script,
    pub apply: Script,
    pub forget: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            claim: Script::new(CLAIM),
            apply: Script::new(APPLY),
            forget: Script::new(FORGET),
        }
    }
}

/// One operation of [`APPLY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Record,
    Chunk,
    /// Hand back, claimable after this long.
    Release(std::time::Duration),
    Touch,
}

impl Op {
    pub fn letter(self) -> &'static str {
        match self {
            Op::Record => "R",
            Op::Chunk => "C",
            Op::Release(_) => "N",
            Op::Touch => "T",
        }
    }
}
