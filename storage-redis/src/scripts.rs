//! The Lua scripts: every write the store makes is one of these, run
//! atomically by Redis (EVALSHA, loaded on first use).
//!
//! Calling convention: `KEYS[1]` is a key of the partition the call is
//! routed to (in a cluster every key a call touches carries that
//! partition's hash tag), `ARGV[1]` the partition's key base `{prefix:pK}`
//! and `ARGV[2]` the retention. The claim and finish scripts take a base
//! per item: on a single server one call spans partitions, in a cluster the
//! store only batches items of one partition. Times are decimal
//! microseconds since the Unix epoch, exact as Lua numbers (doubles) until
//! the year 2255; they are written back with `%d`, never with `tostring`
//! (which switches to an exponent). Strings coming from the client (names,
//! errors, output) are only ever stored and returned, never interpreted, so
//! any bytes are fine.
//!
//! Layout under the base `B` (see the crate docs): `B:t:<task>` task hash,
//! `B:h:<task>` its history (score `scheduled_for`, member `<attempt, 10
//! digits>:<execution id>`), `B:x:<execution>` execution hash, `B:due` /
//! `B:leases` / `B:retry` the partition's due, lease and retry indexes,
//! `B:tn:<tenant>` the tenant's tasks in this partition (score 0, member
//! the id, so lexical = id order).
//!
//! An execution hash holds `c`, its immutable part, and the mutable fields
//! `st` (status) and `fence`, then as they apply `fa` (finished_at), `err`,
//! `out`, `retry` (retry_at), `sa` (the actual start a finish reported) and
//! `tb` (`1`: its end updates its task, see the crate docs). A missing
//! field is "none"; `err` / `out` are stored as `=` and the text, so an
//! empty text is not "none". The lease of a running execution is its score
//! in `B:leases`, nowhere else, and its duration is not stored (the client
//! computes it from the start and finish times, as the scripts did). `c` is
//! `<task id> <attempt, 10 digits> <trigger> <scheduled_for> <started_at> `
//! then the tenant and the node, each as its length in bytes, `:` and the
//! bytes: the client writes it with the claim, scripts write it for the
//! runs they start (missed records, queued occurrences) and read the
//! first three fields back on the uncommon paths (retries, recovery,
//! re-sent claims, runs that update their task).
//!
//! The task hash's `run` field lists its running executions
//! (comma-separated ids), `q` its queued occurrence
//! (`sf|attempt|trigger|execution id`, empty for none), `hs` the highest
//! scheduled_for in its history (so that inserting a later one needs no
//! uniqueness lookup), `bk` is `1` when its runs are tracked there (its
//! overlap policy is not `allow` or it is a one-time task).
//!
//! Each script is its body behind only the helpers it uses: Redis runs the
//! whole chunk on every call, so every helper defined costs each call.

use std::sync::LazyLock;

use redis::Script;

/// Every script starts with this: the retention and the partition's keys.
const BASE: &str = r#"
local RETENTION = tonumber(ARGV[2])
-- The partition's key base and index keys; batch scripts switch partitions
-- per item with use_base.
local B, DUE, LEASES, RETRY
local function use_base(base)
  if base == B then return end
  B = base
  DUE, LEASES, RETRY = base .. ':due', base .. ':leases', base .. ':retry'
end
use_base(ARGV[1])
local function tkey(tid) return B .. ':t:' .. tid end
local function hkey(tid) return B .. ':h:' .. tid end
local function xkey(eid) return B .. ':x:' .. eid end
local function none(v) return (not v) or v == '' end
"#;

/// Integer formatting (times, fences, revisions).
const FMT: &str = r#"
local function fmt(n) return string.format('%d', n) end
"#;

/// Reading an execution back.
const EXEC_READ: &str = r#"
-- An execution as a flat field/value list (HGETALL, its lease if it is
-- running, its id).
local function exec_reply(eid)
  local f = redis.call('HGETALL', xkey(eid))
  for k = 1, #f, 2 do
    if f[k] == 'st' then
      if f[k + 1] == 'running' then
        local lease = redis.call('ZSCORE', LEASES, eid)
        if lease then
          f[#f + 1] = 'lease'
          f[#f + 1] = lease
        end
      end
      break
    end
  end
  f[#f + 1] = 'id'
  f[#f + 1] = eid
  return f
end

-- The task id, attempt and trigger of an execution from its encoding `c`.
local function exec_meta(c)
  return string.match(c, '^(%S+) (%S+) (%S+) ')
end
"#;

/// Writing executions: insert (with the retention trim) and end.
const EXEC_WRITE: &str = r#"
-- The encoding `c` of an execution a script starts.
local function encode(tid, att, trig, sf, sa, tn, node)
  return tid .. ' ' .. att .. ' ' .. trig .. ' ' .. sf .. ' ' .. sa .. ' ' .. #tn .. ':' .. tn
    .. #node .. ':' .. node
end

-- Drops the oldest finished executions of history `h` beyond the
-- retention; running ones and failed ones awaiting a retry are kept
-- whatever their age. In the steady state (the history at its limit, one
-- execution just added) the one to drop is the oldest: it is popped
-- directly, and the loop only runs when it has to be kept.
local function trim(h)
  local excess = redis.call('ZCARD', h) - RETENTION
  if excess <= 0 then return end
  if excess == 1 then
    local oldest = redis.call('ZPOPMIN', h)
    local x = xkey(string.sub(oldest[1], 12))
    local st, retry = unpack(redis.call('HMGET', x, 'st', 'retry'))
    if st ~= 'running' and none(retry) then
      redis.call('DEL', x)
      return
    end
    redis.call('ZADD', h, oldest[2], oldest[1])
  end
  local doomed = {}
  local start = 0
  local size = excess + 1
  while #doomed < excess do
    local chunk = redis.call('ZRANGE', h, start, start + size - 1)
    if #chunk == 0 then break end
    for _, m in ipairs(chunk) do
      local x = xkey(string.sub(m, 12))
      local st, retry = unpack(redis.call('HMGET', x, 'st', 'retry'))
      if st ~= 'running' and none(retry) then
        doomed[#doomed + 1] = m
        if #doomed >= excess then break end
      end
    end
    start = start + size
    size = 64
  end
  for _, m in ipairs(doomed) do
    redis.call('ZREM', h, m)
    redis.call('DEL', xkey(string.sub(m, 12)))
  end
end

-- Inserts execution `id` of task `tid`, whose history's highest
-- scheduled_for is `hs` (its task's field, nil for an empty history):
-- scheduled_for `sf`, attempt `att` (10 digits), status `st`, `fence`,
-- encoding `c`, lease_until `lease` ('' none) and the further field/value
-- list `extra` (or nil). Returns the history's new highest scheduled_for,
-- which the caller writes to the task, or false if (scheduled_for,
-- attempt) is taken. Only an occurrence at or before `hs` can be taken, so
-- the usual insert, of a new latest occurrence, looks nothing up.
local function insert_exec(tid, hs, id, sf, att, st, fence, c, lease, extra)
  local h = hkey(tid)
  if hs and tonumber(sf) <= tonumber(hs) then
    local prefix = att .. ':'
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', h, sf, sf)) do
      if string.sub(m, 1, 11) == prefix then return false end
    end
  else
    hs = sf
  end
  if extra then
    redis.call('HSET', xkey(id), 'c', c, 'st', st, 'fence', fence, unpack(extra))
  else
    redis.call('HSET', xkey(id), 'c', c, 'st', st, 'fence', fence)
  end
  redis.call('ZADD', h, sf, att .. ':' .. id)
  if st == 'running' and lease ~= '' then
    redis.call('ZADD', LEASES, lease, id)
  end
  trim(h)
  return hs
end

-- Ends a running execution (its task's `run` list is the caller's to
-- update): its lease dropped, status, fence bump, finish time, the error
-- (encoded: '' none, else '=' and the text) and the further field/value
-- pairs `...` written.
local function end_running(eid, fence, status, fa, err, ...)
  redis.call('ZREM', LEASES, eid)
  if err == '' then
    redis.call('HSET', xkey(eid), 'st', status, 'fence', fmt(tonumber(fence) + 1), 'fa', fa, ...)
  else
    redis.call('HSET', xkey(eid), 'st', status, 'fence', fmt(tonumber(fence) + 1), 'fa', fa,
      'err', err, ...)
  end
end
"#;

/// The running-ids list of a task.
const RUN_LIST: &str = r#"
-- The running ids list with `eid` added / removed.
local function run_add(run, eid)
  if none(run) then return eid end
  return run .. ',' .. eid
end
local function run_remove(run, eid)
  if none(run) then return '' end
  local kept = {}
  for id in string.gmatch(run, '[^,]+') do
    if id ~= eid then kept[#kept + 1] = id end
  end
  return table.concat(kept, ',')
end
"#;

/// What follows the end of a run that updates its task (FINISH, RECOVER).
const AFTER_END: &str = r#"
-- After a running execution of a task ended: drop it from the task's
-- running list, settle a one-time task (`completed`, or `failed` when no
-- retry follows), and start the queued occurrence if nothing else runs.
-- Returns the id of the execution started, or nil.
local function after_end(tid, eid, trig, status, retry, node, now, lease)
  local t = tkey(tid)
  local run, cr, q, tn, rv, hs =
    unpack(redis.call('HMGET', t, 'run', 'cr', 'q', 'tn', 'rv', 'hs'))
  if not tn then return nil end
  run = run_remove(run, eid)
  local set = {}
  if trig ~= 'manual' and none(retry) and cr == '0' then
    set[#set + 1] = 'st'
    set[#set + 1] = status == 'succeeded' and 'completed' or 'failed'
    set[#set + 1] = 'rv'
    set[#set + 1] = fmt(tonumber(rv) + 1)
  end
  local started = nil
  if not none(q) and run == '' then
    local sf, att, qtrig, id = string.match(q, '^([^|]+)|([^|]+)|([^|]+)|([^|]+)$')
    set[#set + 1] = 'q'
    set[#set + 1] = ''
    set[#set + 1] = 'lr'
    set[#set + 1] = now
    local c = encode(tid, att, qtrig, sf, now, tn, node)
    hs = insert_exec(tid, hs, id, sf, att, 'running', '1', c, lease, {'tb', '1'})
    if hs then
      set[#set + 1] = 'hs'
      set[#set + 1] = hs
      run = id
      started = id
    end
  end
  redis.call('HSET', t, 'run', run, unpack(set))
  return started
end
"#;

/// Retry backoff (RECOVER).
const BACKOFF: &str = r#"
-- Delay in ms before retry number `retry`: doubled per earlier retry,
-- capped at 10 minutes (Policy::backoff).
local function backoff_ms(bo, retry)
  local r = tonumber(retry) - 1
  if r < 0 then r = 0 end
  if r > 32 then r = 32 end
  local v = tonumber(bo) * (2 ^ r)
  if v > 600000 then v = 600000 end
  return v
end
"#;

/// RFC 3339 formatting (the replaced-run message of CLAIM).
const RFC3339: &str = r#"
-- RFC 3339 text of a time in microseconds, as chrono's to_rfc3339 writes it.
local function rfc3339(us)
  local n = tonumber(us)
  local secs = math.floor(n / 1000000)
  local frac = n - secs * 1000000
  local days = math.floor(secs / 86400)
  local sod = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  if m <= 2 then y = y + 1 end
  local s = string.format('%04d-%02d-%02dT%02d:%02d:%02d', y, m, d, math.floor(sod / 3600),
    math.floor((sod % 3600) / 60), sod % 60)
  if frac > 0 then
    if frac % 1000 == 0 then
      s = s .. string.format('.%03d', frac / 1000)
    else
      s = s .. string.format('.%06d', frac)
    end
  end
  return s .. '+00:00'
end
"#;

/// Byte-wise comparison (DUE_PAGE).
const BYTES_GT: &str = r#"
-- Byte-wise a > b (Lua's own comparison follows the server's locale).
local function bytes_gt(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
"#;

/// Creates a task. ARGV[3..]: id, d, tenant, next_run ("" none), last_run
/// ("" none), version, enabled, status, overlap, max_retries, backoff_ms,
/// is_cron, bookkeeping (`1` if its runs are tracked), channel, message.
/// Returns `ok` or `exists`.
const CREATE: &str = r#"
local tid, d, tn, nr, lr, v, en, st, ov, mr, bo, cr, bk, channel, msg =
  ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11],
  ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16], ARGV[17]
local t = tkey(tid)
if redis.call('EXISTS', t) == 1 then return 'exists' end
redis.call('HSET', t, 'd', d, 'tn', tn, 'v', v, 'en', en, 'st', st, 'ov', ov, 'mr', mr,
  'bo', bo, 'cr', cr, 'bk', bk, 'rv', '1')
if nr ~= '' then redis.call('HSET', t, 'nr', nr) end
if lr ~= '' then redis.call('HSET', t, 'lr', lr) end
if en == '1' and nr ~= '' then redis.call('ZADD', DUE, nr, tid) end
redis.call('ZADD', B .. ':tn:' .. tn, 0, tid)
redis.call('PUBLISH', channel, msg)
return 'ok'
"#;

/// Updates a task if it is still as read: the same revision (bumped by
/// updates and by the runs that settle a one-time task) and the same
/// next_run (which claims move). ARGV[3..]: id, tenant, seen revision, seen
/// next_run ("" none), d, next_run ("" none), version, enabled, status,
/// overlap, max_retries, backoff_ms, is_cron, bookkeeping, channel,
/// message. Returns `ok`, `notfound` or `retry` (the task moved on since it
/// was read).
const UPDATE: &str = r#"
local tid, tn, seen, seen_nr, d, nr, v, en, st, ov, mr, bo, cr, bk, channel, msg =
  ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11],
  ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16], ARGV[17], ARGV[18]
local t = tkey(tid)
local owner, rv, old_nr, old_bk = unpack(redis.call('HMGET', t, 'tn', 'rv', 'nr', 'bk'))
if owner ~= tn then return 'notfound' end
if rv ~= seen or (old_nr or '') ~= seen_nr then return 'retry' end
if bk == '1' and old_bk ~= '1' then
  -- Runs started while the task needed no bookkeeping are not listed:
  -- list them now, and have their ends update the task.
  local running = {}
  for _, m in ipairs(redis.call('ZRANGE', hkey(tid), 0, -1)) do
    local eid = string.sub(m, 12)
    if redis.call('HGET', xkey(eid), 'st') == 'running' then
      redis.call('HSET', xkey(eid), 'tb', '1')
      running[#running + 1] = eid
    end
  end
  redis.call('HSET', t, 'run', table.concat(running, ','))
end
redis.call('HSET', t, 'd', d, 'v', v, 'en', en, 'st', st, 'ov', ov, 'mr', mr, 'bo', bo,
  'cr', cr, 'bk', bk)
redis.call('HINCRBY', t, 'rv', 1)
redis.call('ZREM', DUE, tid)
if nr ~= '' then
  redis.call('HSET', t, 'nr', nr)
  if en == '1' then redis.call('ZADD', DUE, nr, tid) end
else
  redis.call('HDEL', t, 'nr')
end
redis.call('PUBLISH', channel, msg)
return 'ok'
"#;

/// One page of the due index after a `(next_run, id)` key. ARGV[3..]:
/// after time ("" from the start), after id, horizon, limit. Returns a flat
/// list of (id, score).
const DUE_PAGE: &str = r#"
local after, after_id, horizon, limit = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local start = 0
if after ~= '' then
  local lo = redis.call('ZCOUNT', DUE, '-inf', '(' .. after)
  local hi = redis.call('ZCOUNT', DUE, '-inf', after)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local m = redis.call('ZRANGE', DUE, mid, mid)[1]
    if bytes_gt(m, after_id) then hi = mid else lo = mid + 1 end
  end
  start = lo
end
local stop = math.min(start + limit, redis.call('ZCOUNT', DUE, '-inf', horizon)) - 1
if stop < start then return {} end
return redis.call('ZRANGE', DUE, start, stop, 'WITHSCORES')
"#;

/// Deletes a task and its executions. ARGV[3..]: id, tenant, channel,
/// message. Returns `ok` or `notfound`.
const DELETE: &str = r#"
local tid, tn, channel, msg = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local t = tkey(tid)
if redis.call('HGET', t, 'tn') ~= tn then return 'notfound' end
local h = hkey(tid)
for _, m in ipairs(redis.call('ZRANGE', h, 0, -1)) do
  local eid = string.sub(m, 12)
  redis.call('DEL', xkey(eid))
  redis.call('ZREM', LEASES, eid)
  redis.call('ZREM', RETRY, eid)
end
redis.call('DEL', h, t)
redis.call('ZREM', DUE, tid)
redis.call('ZREM', B .. ':tn:' .. tn, tid)
redis.call('PUBLISH', channel, msg)
return 'ok'
"#;

/// Claims, each applied atomically and independently. ARGV[3] = `1` if
/// this call is a re-send of one whose reply was lost, ARGV[4] = number of
/// claims, then per claim: partition base, task id, kind (`S`cheduled,
/// `R`etry, `M`anual), for S: expected next_run, expected version, new
/// next_run ("" none), the version of the definition the client has (""
/// none; a lost claim's reply leaves out a definition the client has, as
/// an empty `d`); for R: the failed execution id; then the number of
/// missed records, and if any the claim's time and node and each as (id,
/// scheduled_for); then `0` (no execution) or `1` and the execution's id,
/// scheduled_for, attempt (10 digits), started_at, status, fence,
/// lease_until and encoding `c`.
///
/// Returns one reply per claim: `{'S'}` started, `{'K', fields}` skipped,
/// `{'Q'}` queued, `{'R', replaced ids...}` replaced, `{'A'}` advanced,
/// `{'L', task fields...}` lost (`{'L'}` if the task is gone). A queued
/// occurrence keeps the claim's execution id: the run that starts it later
/// has that id.
///
/// In a re-send, a claim whose execution id is already stored was applied
/// by the first send (its reply was lost with the connection): it is
/// answered as then, not applied twice. Outside a re-send the same claim
/// made twice loses the second time, like any stale claim.
const CLAIM: &str = r#"
local RESEND = ARGV[3] == '1'
-- Replies without data, shared by every claim that gets them.
local STARTED, QUEUED, ADVANCED, GONE = {'S'}, {'Q'}, {'A'}, {'L'}
local SKIPPED_WHY = '=the previous run was still running'

-- The reply of a lost claim: the task as it is now, its definition left
-- out (empty) when the claimer has it at the current version `kv`.
local function lost(tid, kv)
  local t = tkey(tid)
  local nr, lr, v, en, st = unpack(redis.call('HMGET', t, 'nr', 'lr', 'v', 'en', 'st'))
  if not v then return GONE end
  local d = ''
  if v ~= kv then d = redis.call('HGET', t, 'd') end
  return {'L', d, nr, lr, v, en, st}
end

-- The reply of a claim applied before (same execution id, its arguments
-- at ARGV[at]), or nil.
local function replay(tid, at)
  if not RESEND or not at then return nil end
  local eid = ARGV[at]
  local c, st = unpack(redis.call('HMGET', xkey(eid), 'c', 'st'))
  if not c or exec_meta(c) ~= tid then return nil end
  if st == 'running' then return STARTED end
  if st == 'skipped' then return {'K', unpack(exec_reply(eid))} end
  return nil
end

-- Sets `field` to `value` in the field/value list `set`.
local function put(set, field, value)
  for k = 1, #set, 2 do
    if set[k] == field then
      set[k + 1] = value
      return
    end
  end
  set[#set + 1] = field
  set[#set + 1] = value
end

-- Records the `n` missed occurrences whose arguments start at ARGV[at];
-- `hs` and the result as for insert_exec (never false).
local function record_missed(tid, hs, at, n)
  local now, node = ARGV[at], ARGV[at + 1]
  local tn = redis.call('HGET', tkey(tid), 'tn')
  for k = at + 2, at + 2 * n, 2 do
    local id, sf = ARGV[k], ARGV[k + 1]
    local c = encode(tid, '0000000001', 'schedule', sf, now, tn, node)
    hs = insert_exec(tid, hs, id, sf, '0000000001', 'missed', '1', c, '', {'fa', now}) or hs
  end
  return hs
end

-- Starts the execution whose arguments start at ARGV[at], or applies the
-- task's overlap policy if a run of it is still running (`bk`: the task
-- tracks its runs in `run`, with policy `ov` and queued occurrence `q`).
-- `set` holds task fields to write in any case; `hs` as for insert_exec.
local function start_or_overlap(tid, at, set, hs, bk, run, ov, q)
  local t = tkey(tid)
  local id, sf, att, now, st, fence, lease, c =
    ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5],
    ARGV[at + 6], ARGV[at + 7]
  local replaced = nil
  if not none(run) then
    if ov == 'queue_one' and none(q) then
      local _, _, trig = exec_meta(c)
      set[#set + 1] = 'q'
      set[#set + 1] = sf .. '|' .. att .. '|' .. trig .. '|' .. id
      redis.call('HSET', t, unpack(set))
      return QUEUED
    elseif ov == 'skip' or ov == 'queue_one' then
      local why = {'fa', now, 'err', SKIPPED_WHY}
      local new_hs = insert_exec(tid, hs, id, sf, att, 'skipped', fence, c, '', why)
      if new_hs then put(set, 'hs', new_hs) end
      if #set > 0 then redis.call('HSET', t, unpack(set)) end
      if new_hs then return {'K', unpack(exec_reply(id))} end
      return lost(tid)
    elseif ov == 'replace' then
      local why = '=replaced by the run for ' .. rfc3339(sf)
      replaced = {}
      for rid in string.gmatch(run, '[^,]+') do
        local rfence = redis.call('HGET', xkey(rid), 'fence')
        if rfence then
          end_running(rid, rfence, 'abandoned', now, why)
          replaced[#replaced + 1] = rid
        end
      end
      table.sort(replaced)
      run = ''
    end
  end
  local extra = nil
  if bk == '1' then extra = {'tb', '1'} end
  local new_hs = insert_exec(tid, hs, id, sf, att, st, fence, c, lease, extra)
  if not new_hs then
    if replaced then put(set, 'run', '') end
    if #set > 0 then redis.call('HSET', t, unpack(set)) end
    return lost(tid)
  end
  put(set, 'hs', new_hs)
  if bk == '1' then put(set, 'run', run_add(run, id)) end
  redis.call('HSET', t, 'lr', now, unpack(set))
  if not replaced then return STARTED end
  return {'R', unpack(replaced)}
end

-- A scheduled claim: the compare-and-set of next_run and version (its
-- arguments at ARGV[s]), the missed records (`nmissed` at ARGV[missed]),
-- then the execution at ARGV[at] (nil: only advance).
local function claim_scheduled(tid, s, missed, nmissed, at)
  local t = tkey(tid)
  local nr, v, en, bk, hs = unpack(redis.call('HMGET', t, 'nr', 'v', 'en', 'bk', 'hs'))
  if en ~= '1' or nr ~= ARGV[s] or v ~= ARGV[s + 1] then
    return replay(tid, at) or lost(tid, ARGV[s + 3])
  end
  local new_nr = ARGV[s + 2]
  if new_nr ~= '' then
    redis.call('ZADD', DUE, new_nr, tid)
  else
    redis.call('ZREM', DUE, tid)
    redis.call('HDEL', t, 'nr')
  end
  if at and not missed and bk ~= '1' then
    -- The common case (a run of a cron task with `overlap: allow`), with
    -- no tables built.
    local id, sf, att, now = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
    hs = insert_exec(tid, hs, id, sf, att, ARGV[at + 4], ARGV[at + 5], ARGV[at + 7],
      ARGV[at + 6])
    if not hs then
      if new_nr ~= '' then redis.call('HSET', t, 'nr', new_nr) end
      return lost(tid)
    end
    if new_nr ~= '' then
      redis.call('HSET', t, 'lr', now, 'hs', hs, 'nr', new_nr)
    else
      redis.call('HSET', t, 'lr', now, 'hs', hs)
    end
    return STARTED
  end
  local set = {}
  if new_nr ~= '' then
    set[1] = 'nr'
    set[2] = new_nr
  end
  if missed then
    hs = record_missed(tid, hs, missed, nmissed)
    -- Written whatever happens next: the records raised it.
    if hs then put(set, 'hs', hs) end
  end
  if not at then
    if #set > 0 then redis.call('HSET', t, unpack(set)) end
    return ADVANCED
  end
  if bk ~= '1' then return start_or_overlap(tid, at, set, hs) end
  local run, ov, q = unpack(redis.call('HMGET', t, 'run', 'ov', 'q'))
  return start_or_overlap(tid, at, set, hs, bk, run, ov, q)
end

-- A retry (of execution `failed`) or manual claim: no condition but that
-- the task exists (and, for a retry, that `failed` still awaits it).
local function claim_other(tid, failed, at)
  local t = tkey(tid)
  local tn, bk, run, ov, q, hs =
    unpack(redis.call('HMGET', t, 'tn', 'bk', 'run', 'ov', 'q', 'hs'))
  if not tn then return GONE end
  if failed then
    local x = xkey(failed)
    local c, retry = unpack(redis.call('HMGET', x, 'c', 'retry'))
    if not c or exec_meta(c) ~= tid or none(retry) then
      return replay(tid, at) or lost(tid)
    end
    redis.call('ZREM', RETRY, failed)
    redis.call('HDEL', x, 'retry')
  else
    local r = replay(tid, at)
    if r then return r end
  end
  if not at then return ADVANCED end
  return start_or_overlap(tid, at, {}, hs, bk, run, ov, q)
end

local out = {}
local i = 5
for n = 1, tonumber(ARGV[4]) do
  use_base(ARGV[i])
  local tid, kind = ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local s, failed = i, nil
  if kind == 'S' then
    i = i + 4
  elseif kind == 'R' then
    failed = ARGV[i]
    i = i + 1
  end
  local nmissed, missed = tonumber(ARGV[i]), nil
  i = i + 1
  if nmissed > 0 then
    missed = i
    i = i + 2 + 2 * nmissed
  end
  -- The execution is read from ARGV only if the claim gets that far.
  local at = nil
  if ARGV[i] == '1' then
    at = i + 1
    i = i + 9
  else
    i = i + 1
  end
  if kind == 'S' then
    out[n] = claim_scheduled(tid, s, missed, nmissed, at)
  else
    out[n] = claim_other(tid, failed, at)
  end
end
return out
"#;

/// Extends a lease. ARGV[3..]: execution id, fence, until. Returns `ok`,
/// `gone` (no such execution here) or `taken` (fence moved on or it ended).
const RENEW: &str = r#"
local eid, fence, untl = ARGV[3], ARGV[4], ARGV[5]
local st, f = unpack(redis.call('HMGET', xkey(eid), 'st', 'fence'))
if not st then return 'gone' end
if st ~= 'running' or f ~= fence then return 'taken' end
redis.call('ZADD', LEASES, untl, eid)
return 'ok'
"#;

/// Records results, each atomically and independently. ARGV[3] = number
/// of results, then per result: partition base, execution id, fence,
/// status, finished_at, error ("" none, else `=` and the text), output
/// (same), retry_at ("" none), node and lease_until (for a queued
/// occurrence started here), the run's actual start ("" as claimed).
/// Returns one reply per result: `{'OK'}`, `{'OK', started execution
/// fields}`, `{'C', 'gone'}`, `{'C', 'taken'}` or `{'I'}` (status
/// `running`). The same result sent twice (a reply lost with the
/// connection) is `{'OK'}` the second time.
const FINISH: &str = r#"
-- Replies without data, shared by every result that gets them.
local OK, GONE, TAKEN, RUNNING = {'OK'}, {'C', 'gone'}, {'C', 'taken'}, {'I'}

local function finish_one(eid, fence, status, fa, err, output, retry, node, lease, actual)
  local x = xkey(eid)
  local st, xf, tb = unpack(redis.call('HMGET', x, 'st', 'fence', 'tb'))
  if not st then return GONE end
  if st ~= 'running' or xf ~= fence then
    if st == status and tonumber(xf) == tonumber(fence) + 1
        and redis.call('HGET', x, 'fa') == fa then
      return OK
    end
    return TAKEN
  end
  if status == 'running' then return RUNNING end
  if retry ~= '' and status ~= 'succeeded' then
    redis.call('ZADD', RETRY, retry, eid)
  else
    retry = ''
  end
  if output == '' and actual == '' and retry == '' then
    end_running(eid, xf, status, fa, err)
  else
    local extra = {}
    if output ~= '' then
      extra[#extra + 1] = 'out'
      extra[#extra + 1] = output
    end
    if actual ~= '' then
      extra[#extra + 1] = 'sa'
      extra[#extra + 1] = actual
    end
    if retry ~= '' then
      extra[#extra + 1] = 'retry'
      extra[#extra + 1] = retry
    end
    end_running(eid, xf, status, fa, err, unpack(extra))
  end
  if tb ~= '1' then return OK end
  local tid, _, trig = exec_meta(redis.call('HGET', x, 'c'))
  local started = after_end(tid, eid, trig, status, retry, node, fa, lease)
  trim(hkey(tid))
  if started then return {'OK', unpack(exec_reply(started))} end
  return OK
end

local out = {}
local i = 4
for c = 1, tonumber(ARGV[3]) do
  use_base(ARGV[i])
  out[c] = finish_one(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5],
    ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10])
  i = i + 11
end
return out
"#;

/// Takes over expired leases. ARGV[3..]: now, node, lease_until (for
/// queued occurrences started here), the most to take over.
/// Returns a list of `{'A', fields}` (abandoned) and `{'S', fields}`
/// (started) replies.
const RECOVER: &str = r#"
local now, node, lease, limit = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local out = {}
if limit <= 0 then return out end
local WHY = '=lease expired: its scheduler stopped renewing it'
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', '(' .. now, 'LIMIT', 0, limit)
for _, eid in ipairs(expired) do
  local x = xkey(eid)
  local st, fence, tb, c = unpack(redis.call('HMGET', x, 'st', 'fence', 'tb', 'c'))
  if st ~= 'running' then
    redis.call('ZREM', LEASES, eid)
  else
    local tid, att, trig = exec_meta(c)
    local mr, bo = unpack(redis.call('HMGET', tkey(tid), 'mr', 'bo'))
    local retry = ''
    if mr and tonumber(att) <= tonumber(mr) then
      retry = fmt(tonumber(now) + backoff_ms(bo, att) * 1000)
      redis.call('ZADD', RETRY, retry, eid)
      end_running(eid, fence, 'abandoned', now, WHY, 'retry', retry)
    else
      end_running(eid, fence, 'abandoned', now, WHY)
    end
    local started = nil
    if tb == '1' then
      started = after_end(tid, eid, trig, 'abandoned', retry, node, now, lease)
    end
    out[#out + 1] = {'A', unpack(exec_reply(eid))}
    if started then
      out[#out + 1] = {'S', unpack(exec_reply(started))}
    end
  end
end
return out
"#;

/// One task's history. ARGV[3..]: task id, tenant, offset, limit, status
/// ("" any). Returns `{'notfound'}` or `{total, fields, fields, ...}`,
/// newest first.
const HISTORY: &str = r#"
local tid, tn, offset, limit, status =
  ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
if redis.call('HGET', tkey(tid), 'tn') ~= tn then return {'notfound'} end
local h = hkey(tid)
local out = {0}
if status == '' then
  out[1] = redis.call('ZCARD', h)
  if limit > 0 then
    for _, m in ipairs(redis.call('ZREVRANGE', h, offset, offset + limit - 1)) do
      out[#out + 1] = exec_reply(string.sub(m, 12))
    end
  end
  return out
end
local total = 0
for _, m in ipairs(redis.call('ZREVRANGE', h, 0, -1)) do
  local eid = string.sub(m, 12)
  if redis.call('HGET', xkey(eid), 'st') == status then
    if total >= offset and total < offset + limit then
      out[#out + 1] = exec_reply(eid)
    end
    total = total + 1
  end
end
out[1] = total
return out
"#;

/// A script of `parts` (helpers, then the body), behind [`BASE`].
fn script(parts: &[&str]) -> Script {
    Script::new(&[&[BASE], parts].concat().concat())
}

pub(crate) static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[CREATE]));
pub(crate) static UPDATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[UPDATE]));
pub(crate) static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[DELETE]));
pub(crate) static CLAIM_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[FMT, EXEC_READ, EXEC_WRITE, RUN_LIST, RFC3339, CLAIM]));
pub(crate) static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[RENEW]));
pub(crate) static FINISH_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[FMT, EXEC_READ, EXEC_WRITE, RUN_LIST, AFTER_END, FINISH]));
pub(crate) static RECOVER_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        FMT, EXEC_READ, EXEC_WRITE, RUN_LIST, AFTER_END, BACKOFF, RECOVER,
    ])
});
pub(crate) static DUE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[BYTES_GT, DUE_PAGE]));
pub(crate) static HISTORY_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[EXEC_READ, HISTORY]));

/// Scheduler membership (`Store::heartbeat`), without [`BASE`]: `KEYS[1]`
/// the membership sorted set `{prefix:nodes}` (score: alive-until in
/// microseconds), `ARGV[1]` the node, `ARGV[2]` now, `ARGV[3]` its
/// alive-until. Records the node, drops entries expired for a day, returns
/// the live names (this node's included).
const HEARTBEAT: &str = r#"
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
-- Entries are dropped a day after they expire, so a node whose clock runs
-- ahead cannot delete its peers' live entries.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', tonumber(ARGV[2]) - 86400e6))
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf')
for _, n in ipairs(live) do
  if n == ARGV[1] then return live end
end
live[#live + 1] = ARGV[1]
return live
"#;

pub(crate) static HEARTBEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(HEARTBEAT));
