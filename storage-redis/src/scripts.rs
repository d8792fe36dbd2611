//! The Lua scripts: every write the store makes is one of these, run
//! atomically by Redis (EVALSHA, loaded on first use).
//!
//! Calling convention: `KEYS[1]` is a key of the partition the call is
//! routed to (in a cluster every key a call touches carries that
//! partition's hash tag), `ARGV[1]` the partition's key base `{prefix:pK}`
//! and `ARGV[2]` the retention. The claim and finish scripts take their
//! items in groups, one per partition, each behind its partition's base:
//! on a single server one call spans partitions, in a cluster the store
//! only batches items of one partition. Every argument costs the server a
//! little to receive (about 0.13 µs), so the usual items carry only what
//! their common path reads. Times are decimal
//! microseconds since the Unix epoch, exact as Lua numbers (doubles) until
//! the year 2255; they are written back with `%d`, never with `tostring`
//! (which switches to an exponent). Strings coming from the client (names,
//! errors, output) are only ever stored and returned, never interpreted, so
//! any bytes are fine.
//!
//! Layout under the base `B` (see the crate docs): `B:t:<task>` task hash,
//! `B:l:<task>` its finished executions (a list, the latest to finish
//! first), `B:due` / `B:leases` / `B:retry` the partition's due, lease and
//! retry indexes, `B:tn:<tenant>` the tenant's tasks in this partition
//! (score 0, member the id, so lexical = id order).
//!
//! An execution is one string, in one place at a time:
//!
//! - running: a member of `B:leases`, scored by its lease end (`+inf` for
//!   none), `<id>|<fence>|<tracked>|<c>`; `tracked` is `1` when its end
//!   updates its task (see `bk` below);
//! - finished: a *record* in its task's list,
//!   `<id>|<status>|<fence>|<finished_at>|<actual start>|<retry_at>|<error
//!   length>|<output length>|<error><output><c>`, where an empty length
//!   means none and an empty actual start means the one in `c`. An error
//!   and output longer than 256 bytes together are kept aside, in the hash
//!   `B:o:<task>` under the execution's id: the record then marks its error
//!   length with `*` and holds neither, so reading and sorting a history
//!   reads at most 256 bytes of text per record;
//! - failed and awaiting a retry: the record (with its `retry_at`) in the
//!   task hash's field `w:<id>` and as a member of `B:retry` scored by
//!   `retry_at`, until the retry is claimed and the record, its `retry_at`
//!   cleared, joins the list.
//!
//! `c` is the immutable part, `<task id> <attempt, 10 digits> <trigger>
//! <scheduled_for> <started_at> ` then the tenant and the node, each as its
//! length in bytes, `:` and the bytes: the client writes it with the claim,
//! scripts write it for the runs they start (missed records, queued
//! occurrences) and read the first four fields back on the uncommon paths.
//! Durations are not stored: the client computes them from the start and
//! finish times.
//!
//! The list is trimmed to the retention once it is an eighth longer, and
//! only its first `retention` records are read: a history holds the
//! `retention` latest executions to finish, plus those running or awaiting
//! a retry.
//!
//! The task hash's `run` field lists its running executions
//! (comma-separated ids) and `r:<id>` holds each one's lease member, `q`
//! its queued occurrence (`sf|attempt|trigger|execution id`, empty for
//! none), `hs` the highest scheduled_for it ever started or recorded (so
//! that starting a later one needs no uniqueness lookup), `bk` is `1` when
//! its runs are tracked there (its overlap policy is not `allow` or it is a
//! one-time task).
//!
//! The uncommon paths (an occurrence no later than `hs`, a history read, a
//! task's deletion, an execution another store instance started) find a
//! task's running executions by scanning the partition's lease index
//! (`ZSCAN ... MATCH`): their cost grows with the executions running in
//! the partition, which keeps the common path at four commands per run
//! plus a share of batched index updates.
//!
//! Each script is its body behind only the helpers it uses: Redis runs the
//! whole chunk on every call, so every helper defined costs each call.

use std::sync::LazyLock;

use redis::Script;

/// Every script starts with this: the retention, the partition's keys and
/// the batched index writes.
const BASE: &str = r#"
local RETENTION = tonumber(ARGV[2])
-- Lease and due index additions wait here and go in one ZADD each, when
-- the partition changes, before anything reads those indexes, and at the
-- end.
local due_add, lease_add = {}, {}
local B, DUE, LEASES, RETRY
-- How many flushes ran (CLAIM's error path needs to know).
local flushes = 0
local function flush()
  flushes = flushes + 1
  if #due_add > 0 then
    redis.call('ZADD', DUE, unpack(due_add))
    due_add = {}
  end
  if #lease_add > 0 then
    redis.call('ZADD', LEASES, unpack(lease_add))
    lease_add = {}
  end
end
-- Switches to the partition with key base `base` (batch scripts, per group).
local function use_base(base)
  if base == B then return end
  flush()
  B = base
  DUE, LEASES, RETRY = base .. ':due', base .. ':leases', base .. ':retry'
end
use_base(ARGV[1])
local function tkey(tid) return B .. ':t:' .. tid end
local function lkey(tid) return B .. ':l:' .. tid end
local function okey(tid) return B .. ':o:' .. tid end
local function none(v) return (not v) or v == '' end
"#;

/// Integer formatting (times, fences, revisions).
const FMT: &str = r#"
local function fmt(n) return string.format('%d', n) end
"#;

/// Reading executions: members, records and the encoding.
const EXEC_READ: &str = r#"
-- A lease member's id, fence, tracked flag and encoding.
local function member_parts(m)
  return string.match(m, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
end

-- The task id, attempt, trigger and scheduled_for of an encoding `c`.
local function exec_meta(c)
  return string.match(c, '^(%S+) (%S+) (%S+) (%S+) ')
end

-- A record's id, status, fence, finished_at, retry_at and encoding.
local function rec_parts(r)
  local eid, st, fence, fa, _, retry, el, ol, pos =
    string.match(r, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|()')
  local skip = 0
  -- `*`: the error and output are kept aside, not in the record.
  if string.sub(el, 1, 1) ~= '*' then
    if el ~= '' then skip = skip + tonumber(el) end
    if ol ~= '' then skip = skip + tonumber(ol) end
  end
  return eid, st, fence, fa, retry, string.sub(r, pos + skip)
end

-- The id of record `r` if its error and output are kept aside, else nil.
local function aside_id(r)
  local eid, el = string.match(r, '^([^|]*)|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|([^|]*)|')
  if string.sub(el, 1, 1) == '*' then return eid end
  return nil
end

-- The record of execution `eid` in task `tid`'s list, or nil.
local function find_record(tid, eid)
  local prefix = eid .. '|'
  for _, r in ipairs(redis.call('LRANGE', lkey(tid), 0, -1)) do
    if string.sub(r, 1, #prefix) == prefix then return r end
  end
  return nil
end

-- Calls `visit(member, lease)` once for each member of the partition's
-- lease index matching the glob `pattern`, until it returns true.
local function scan_leases(pattern, visit)
  flush()
  local seen = {}
  local cursor = '0'
  repeat
    local r = redis.call('ZSCAN', LEASES, cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = r[1]
    local f = r[2]
    for k = 1, #f, 2 do
      if not seen[f[k]] then
        seen[f[k]] = true
        if visit(f[k], f[k + 1]) then return end
      end
    end
  until cursor == '0'
end

-- The running executions of task `tid` in this partition, as {member,
-- lease score} pairs.
local function running_of(tid)
  local out = {}
  scan_leases('*|' .. tid .. ' *', function(m, lease)
    local _, _, _, c = member_parts(m)
    if exec_meta(c) == tid then out[#out + 1] = {m, lease} end
  end)
  return out
end
"#;

/// Writing executions.
const EXEC_WRITE: &str = r#"
-- The encoding `c` of an execution a script starts.
local function encode(tid, att, trig, sf, sa, tn, node)
  return tid .. ' ' .. att .. ' ' .. trig .. ' ' .. sf .. ' ' .. sa .. ' ' .. #tn .. ':' .. tn
    .. #node .. ':' .. node
end

-- The `<error length>|<output length>|<error><output>` part of a record
-- with error text `why` and no output.
local function why_tail(why)
  return #why .. '||' .. why
end

-- A record (see the module docs); `tail` as from why_tail.
local function record(eid, st, fence, fa, sa, retry, tail, c)
  return eid .. '|' .. st .. '|' .. fence .. '|' .. fa .. '|' .. sa .. '|' .. retry .. '|' .. tail
    .. c
end

-- Adds a finished record to task `tid`'s history, trimming it to the
-- retention once it is an eighth longer (with the text kept aside for the
-- records trimmed).
local function push(tid, rec)
  local l = lkey(tid)
  if redis.call('LPUSH', l, rec) > RETENTION + math.floor(RETENTION / 8) then
    local o = okey(tid)
    if redis.call('EXISTS', o) == 1 then
      local aside = {}
      for _, r in ipairs(redis.call('LRANGE', l, RETENTION, -1)) do
        aside[#aside + 1] = aside_id(r)
      end
      if #aside > 0 then redis.call('HDEL', o, unpack(aside)) end
    end
    redis.call('LTRIM', l, 0, RETENTION - 1)
  end
end

-- Whether task `tid` has an execution of (scheduled_for `sf`, attempt
-- `att`): in its history, awaiting a retry or running.
local function taken(tid, sf, att)
  local function same(c)
    local _, a, _, s = exec_meta(c)
    return a == att and s == sf
  end
  for _, r in ipairs(redis.call('LRANGE', lkey(tid), 0, -1)) do
    local _, _, _, _, _, c = rec_parts(r)
    if same(c) then return true end
  end
  local f = redis.call('HGETALL', tkey(tid))
  for k = 1, #f, 2 do
    if string.sub(f[k], 1, 2) == 'w:' then
      local _, _, _, _, _, c = rec_parts(f[k + 1])
      if same(c) then return true end
    end
  end
  for _, pair in ipairs(running_of(tid)) do
    local _, _, _, c = member_parts(pair[1])
    if same(c) then return true end
  end
  return false
end

-- The task's highest scheduled_for after adding an execution of (`sf`,
-- `att`) to a task whose highest is `hs` (nil: none yet), or false if that
-- pair is taken. Only an occurrence at or before `hs` can be taken, so the
-- usual start, of a new latest occurrence, looks nothing up.
local function admit(tid, hs, sf, att)
  if hs and tonumber(sf) <= tonumber(hs) then
    if taken(tid, sf, att) then return false end
    return hs
  end
  return sf
end

-- Starts execution `id` (`tracked` '1' or '0'); its lease addition is
-- batched. Returns the new highest scheduled_for (or false, see admit) and
-- the lease member.
local function start_exec(tid, hs, id, sf, att, fence, c, lease, tracked)
  hs = admit(tid, hs, sf, att)
  if not hs then return false end
  local m = id .. '|' .. fence .. '|' .. tracked .. '|' .. c
  if lease == '' then lease = '+inf' end
  lease_add[#lease_add + 1] = lease
  lease_add[#lease_add + 1] = m
  return hs, m
end

-- Keeps the record `rec` of execution `eid` of task `tid`: in its history,
-- or awaiting its retry at `retry` ('' none).
local function keep_record(tid, eid, rec, retry)
  if retry == '' then
    push(tid, rec)
  else
    redis.call('HSET', tkey(tid), 'w:' .. eid, rec)
    redis.call('ZADD', RETRY, retry, rec)
  end
end

-- Ends the running execution with lease member `m` of task `tid` (whose
-- hash is known to exist): its lease dropped, its record (`status`, fence
-- bumped, finished at `fa`, actual start `sa`, `retry` ('' none), `tail`)
-- in the history or, with a retry, awaiting it. Returns the record.
local function end_exec(tid, m, status, fa, sa, retry, tail)
  local eid, fence, _, c = member_parts(m)
  redis.call('ZREM', LEASES, m)
  local rec = record(eid, status, fmt(tonumber(fence) + 1), fa, sa, retry, tail, c)
  keep_record(tid, eid, rec, retry)
  return rec
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
-- After a tracked running execution of a task ended: drop it from the
-- task's running list, settle a one-time task (`completed`, or `failed`
-- when no retry follows), and start the queued occurrence if nothing else
-- runs. Returns the started execution's lease member and lease, or nil.
local function after_end(tid, eid, trig, status, retry, node, now, lease)
  local t = tkey(tid)
  local run, cr, q, tn, rv, hs =
    unpack(redis.call('HMGET', t, 'run', 'cr', 'q', 'tn', 'rv', 'hs'))
  if not tn then return nil end
  redis.call('HDEL', t, 'r:' .. eid)
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
    local new_hs, m = start_exec(tid, hs, id, sf, att, '1', c, lease, '1')
    if new_hs then
      set[#set + 1] = 'hs'
      set[#set + 1] = new_hs
      set[#set + 1] = 'r:' .. id
      set[#set + 1] = m
      run = id
      started = m
    end
  end
  redis.call('HSET', t, 'run', run, unpack(set))
  if started then
    flush()
    return started, redis.call('ZSCORE', LEASES, started)
  end
  return nil
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
  -- list them now, and have their ends update the task (their lease
  -- members are rewritten as tracked).
  local running = {}
  for _, pair in ipairs(running_of(tid)) do
    local m, lease = pair[1], pair[2]
    local eid, fence, tracked, c = member_parts(m)
    if tracked ~= '1' then
      redis.call('ZREM', LEASES, m)
      m = eid .. '|' .. fence .. '|1|' .. c
      redis.call('ZADD', LEASES, lease, m)
    end
    redis.call('HSET', t, 'r:' .. eid, m)
    running[#running + 1] = eid
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

/// Deletes a task and its executions. ARGV[3..]: id, tenant, channel,
/// message. Returns `ok` or `notfound`.
const DELETE: &str = r#"
local tid, tn, channel, msg = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local t = tkey(tid)
if redis.call('HGET', t, 'tn') ~= tn then return 'notfound' end
local f = redis.call('HGETALL', t)
for k = 1, #f, 2 do
  if string.sub(f[k], 1, 2) == 'w:' then redis.call('ZREM', RETRY, f[k + 1]) end
end
for _, pair in ipairs(running_of(tid)) do
  redis.call('ZREM', LEASES, pair[1])
end
redis.call('DEL', lkey(tid), okey(tid), t)
redis.call('ZREM', DUE, tid)
redis.call('ZREM', B .. ':tn:' .. tn, tid)
redis.call('PUBLISH', channel, msg)
return 'ok'
"#;

/// Claims, each applied atomically and independently. ARGV[3] = `1` if
/// this call is a re-send of one whose reply was lost, ARGV[4] = number of
/// partition groups, then per group its partition base, its number of
/// claims and the claims. A claim is: task id, kind (`S`cheduled, `T` the
/// same with the client's definition version given, `R`etry, `M`anual),
/// for S: expected next_run, expected version, new next_run ("" none); for
/// T the same and the version of the definition the client has ("" none;
/// S means the expected version: a lost claim's reply leaves out a
/// definition the client has, as an empty `d`); for R: the failed
/// execution id; then twice the number of missed records plus one if the
/// claim starts an execution; the claim's time and node and each missed
/// record as (id, scheduled_for), if any; then the execution's id,
/// scheduled_for, attempt (10 digits), started_at, fence, lease_until and
/// encoding `c`, if any. Each argument costs the server a little to
/// receive, so the usual claim (of a scheduled run) takes 13.
///
/// Returns one reply per claim: `{'S'}` started (`{'S', '1'}` if its end
/// updates its task, so its lease member is tracked), `{'K', record}`
/// skipped, `{'Q'}` queued, `{'R', replaced ids...}` replaced (the started
/// run is tracked), `{'A'}` advanced, `{'L', task fields...}` lost (`{'L'}`
/// if the task is gone). A queued occurrence keeps the claim's execution
/// id: the run that starts it later has that id.
///
/// In a re-send, a claim whose execution id is already stored was applied
/// by the first send (its reply was lost with the connection): it is
/// answered as then, not applied twice. Outside a re-send the same claim
/// made twice loses the second time, like any stale claim.
const CLAIM: &str = r#"
local RESEND = ARGV[3] == '1'
-- Replies without data, shared by every claim that gets them.
local STARTED, TRACKED, QUEUED, ADVANCED, GONE = {'S'}, {'S', '1'}, {'Q'}, {'A'}, {'L'}
local SKIPPED_WHY = why_tail('the previous run was still running')

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
  flush()
  local eid, fence, c = ARGV[at], ARGV[at + 4], ARGV[at + 6]
  if redis.call('ZSCORE', LEASES, eid .. '|' .. fence .. '|0|' .. c) then return STARTED end
  if redis.call('ZSCORE', LEASES, eid .. '|' .. fence .. '|1|' .. c) then return TRACKED end
  local r = find_record(tid, eid)
  if r then
    local _, st = rec_parts(r)
    if st == 'skipped' then return {'K', r} end
  end
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

-- Records a finished execution (`id`, `sf`, `att`, record `rec`) of a
-- task whose highest scheduled_for is `hs`; returns the new highest, or
-- false if (sf, att) is taken.
local function record_finished(tid, hs, sf, att, rec)
  hs = admit(tid, hs, sf, att)
  if hs then push(tid, rec) end
  return hs
end

-- Records the `n` missed occurrences whose arguments start at ARGV[at];
-- `hs` and the result as for admit (never false).
local function record_missed(tid, hs, at, n)
  local now, node = ARGV[at], ARGV[at + 1]
  local tn = redis.call('HGET', tkey(tid), 'tn')
  for k = at + 2, at + 2 * n, 2 do
    local id, sf = ARGV[k], ARGV[k + 1]
    local c = encode(tid, '0000000001', 'schedule', sf, now, tn, node)
    local rec = record(id, 'missed', '1', now, '', '', '||', c)
    hs = record_finished(tid, hs, sf, '0000000001', rec) or hs
  end
  return hs
end

-- Starts the execution whose arguments start at ARGV[at], or applies the
-- task's overlap policy if a run of it is still running (`bk`: the task
-- tracks its runs in `run`, with policy `ov` and queued occurrence `q`).
-- `set` holds task fields to write in any case; `hs` as for admit.
local function start_or_overlap(tid, at, set, hs, bk, run, ov, q)
  local t = tkey(tid)
  local id, sf, att, now, fence, lease, c =
    ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
  local replaced = nil
  if not none(run) then
    if ov == 'queue_one' and none(q) then
      local _, _, trig = exec_meta(c)
      set[#set + 1] = 'q'
      set[#set + 1] = sf .. '|' .. att .. '|' .. trig .. '|' .. id
      redis.call('HSET', t, unpack(set))
      return QUEUED
    elseif ov == 'skip' or ov == 'queue_one' then
      local rec = record(id, 'skipped', fence, now, '', '', SKIPPED_WHY, c)
      local new_hs = record_finished(tid, hs, sf, att, rec)
      if new_hs then put(set, 'hs', new_hs) end
      if #set > 0 then redis.call('HSET', t, unpack(set)) end
      if new_hs then return {'K', rec} end
      return lost(tid)
    elseif ov == 'replace' then
      -- A run to end may have started earlier in this call.
      flush()
      local why = why_tail('replaced by the run for ' .. rfc3339(sf))
      replaced = {}
      for rid in string.gmatch(run, '[^,]+') do
        local m = redis.call('HGET', t, 'r:' .. rid)
        if m and redis.call('ZSCORE', LEASES, m) then
          end_exec(tid, m, 'abandoned', now, '', '', why)
          replaced[#replaced + 1] = rid
        end
        redis.call('HDEL', t, 'r:' .. rid)
      end
      table.sort(replaced)
      run = ''
    end
  end
  local tracked = '0'
  if bk == '1' then tracked = '1' end
  local new_hs, m = start_exec(tid, hs, id, sf, att, fence, c, lease, tracked)
  if not new_hs then
    if replaced then put(set, 'run', '') end
    if #set > 0 then redis.call('HSET', t, unpack(set)) end
    return lost(tid)
  end
  put(set, 'hs', new_hs)
  if bk == '1' then
    put(set, 'run', run_add(run, id))
    put(set, 'r:' .. id, m)
  end
  redis.call('HSET', t, 'lr', now, unpack(set))
  if replaced then return {'R', unpack(replaced)} end
  if bk == '1' then return TRACKED end
  return STARTED
end

-- A scheduled claim: the compare-and-set of next_run and version (its
-- arguments at ARGV[s]; `kv` the client's definition version), the missed
-- records (`nmissed` at ARGV[missed]), then the execution at ARGV[at]
-- (nil: only advance).
local function claim_scheduled(tid, s, kv, missed, nmissed, at)
  local t = tkey(tid)
  local nr, v, en, bk, hs = unpack(redis.call('HMGET', t, 'nr', 'v', 'en', 'bk', 'hs'))
  if en ~= '1' or nr ~= ARGV[s] or v ~= ARGV[s + 1] then
    return replay(tid, at) or lost(tid, kv)
  end
  local new_nr = ARGV[s + 2]
  if new_nr ~= '' then
    due_add[#due_add + 1] = new_nr
    due_add[#due_add + 1] = tid
  else
    flush()
    redis.call('ZREM', DUE, tid)
    redis.call('HDEL', t, 'nr')
  end
  if at and not missed and bk ~= '1' then
    -- The common case (a run of a cron task with `overlap: allow`), with
    -- no tables built.
    local new_hs = start_exec(tid, hs, ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 4],
      ARGV[at + 6], ARGV[at + 5], '0')
    if not new_hs then
      if new_nr ~= '' then redis.call('HSET', t, 'nr', new_nr) end
      return lost(tid)
    end
    if new_nr ~= '' then
      redis.call('HSET', t, 'lr', ARGV[at + 3], 'hs', new_hs, 'nr', new_nr)
    else
      redis.call('HSET', t, 'lr', ARGV[at + 3], 'hs', new_hs)
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

-- The record `rec` with its retry_at cleared.
local function without_retry(rec)
  local head, rest = string.match(rec, '^([^|]*|[^|]*|[^|]*|[^|]*|[^|]*|)[^|]*(|.*)$')
  return head .. rest
end

-- A retry (of execution `failed`) or manual claim: no condition but that
-- the task exists (and, for a retry, that `failed` still awaits it).
local function claim_other(tid, failed, at)
  local t = tkey(tid)
  local tn, bk, run, ov, q, hs =
    unpack(redis.call('HMGET', t, 'tn', 'bk', 'run', 'ov', 'q', 'hs'))
  if not tn then return GONE end
  if failed then
    local rec = redis.call('HGET', t, 'w:' .. failed)
    if not rec then return replay(tid, at) or lost(tid) end
    redis.call('HDEL', t, 'w:' .. failed)
    redis.call('ZREM', RETRY, rec)
    push(tid, without_retry(rec))
  else
    local r = replay(tid, at)
    if r then return r end
  end
  if not at then return ADVANCED end
  return start_or_overlap(tid, at, {}, hs, bk, run, ov, q)
end

local out = {}
-- Each claim is whole when the next begins, except for its batched index
-- writes. If one fails (an error aborts the script, keeping what it
-- wrote), those of the claims before it are written, its own still
-- pending are dropped, and the error is returned with its code.
local mark_due, mark_lease, mark_flushes = 0, 0, 0
local ok, err = pcall(function()
local i, n = 5, 0
for _ = 1, tonumber(ARGV[4]) do
use_base(ARGV[i])
local last = n + tonumber(ARGV[i + 1])
i = i + 2
while n < last do
  n = n + 1
  mark_due, mark_lease, mark_flushes = #due_add, #lease_add, flushes
  local tid, kind = ARGV[i], ARGV[i + 1]
  i = i + 2
  local s, kv, failed = i, nil, nil
  if kind == 'S' then
    kv = ARGV[i + 1]
    i = i + 3
  elseif kind == 'T' then
    kv = ARGV[i + 3]
    i = i + 4
  elseif kind == 'R' then
    failed = ARGV[i]
    i = i + 1
  end
  local x = tonumber(ARGV[i])
  i = i + 1
  local nmissed, missed = math.floor(x / 2), nil
  if nmissed > 0 then
    missed = i
    i = i + 2 + 2 * nmissed
  end
  -- The execution is read from ARGV only if the claim gets that far.
  local at = nil
  if x % 2 == 1 then
    at = i
    i = i + 7
  end
  if kv then
    out[n] = claim_scheduled(tid, s, kv, missed, nmissed, at)
  else
    out[n] = claim_other(tid, failed, at)
  end
end
end
end)
if not ok then
  -- A flush during the failing claim wrote what came before it.
  if flushes ~= mark_flushes then mark_due, mark_lease = 0, 0 end
  for k = #due_add, mark_due + 1, -1 do due_add[k] = nil end
  for k = #lease_add, mark_lease + 1, -1 do lease_add[k] = nil end
end
flush()
if not ok then
  if type(err) == 'table' then error(err) end
  if type(err) == 'string' and string.match(err, '^%u+ ') then return redis.error_reply(err) end
  error(err, 0)
end
return out
"#;

/// Finding a running execution by id alone (RENEW, FINISH).
const FIND: &str = r#"
-- The lease member of running execution `eid` in this partition, or nil.
local function find_member(eid)
  local found = nil
  scan_leases(eid .. '|*', function(m)
    if member_parts(m) == eid then
      found = m
      return true
    end
  end)
  return found
end
"#;

/// Extends a lease. ARGV[3..]: execution id, fence, until, its lease
/// member as the client knows it ("" unknown). Returns `{'ok', member}`,
/// `{'gone'}` (not running here) or `{'taken'}` (its fence moved on).
const RENEW: &str = r#"
local eid, fence, untl, m = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if m == '' or not redis.call('ZSCORE', LEASES, m) then m = find_member(eid) end
if not m then return {'gone'} end
local _, f = member_parts(m)
if f ~= fence then return {'taken'} end
redis.call('ZADD', LEASES, untl, m)
return {'ok', m}
"#;

/// Records results, each atomically and independently. ARGV[3] = number
/// of partition groups, then per group its partition base, its number of
/// results and the results. A result is: the execution's lease member as
/// the client knows it with the result's fence ("" unknown), its task id
/// ("" unknown), its record as it will be stored (whole if the member is
/// known, else without the encoding `c`, which the script appends from the
/// member it finds), the node and lease_until (for a queued occurrence
/// started here), and flags: `t` if the member is known and tracked, `r`
/// if a retry follows (the retry_at comes next), `a` if the error and
/// output are kept aside (they come next). The execution id, the status
/// (never `running`, which the client refuses, nor `succeeded` with a
/// retry), the fence (one less than the record's) and finished_at are read
/// from the record on the uncommon paths that need them.
///
/// Returns one reply per result: `{'OK'}`, `{'OK', started member, its
/// lease}`, `{'C', 'gone'}` or `{'C', 'taken'}`. The same result sent
/// twice (a reply lost with the connection) is `{'OK'}` the second time.
///
/// The usual result (the member known and still running, its task's runs
/// not tracked) takes six arguments and costs two commands, the lease's
/// `ZREM` and the history's `LPUSH` (and an `LTRIM` once per eighth of the
/// retention), and parses nothing.
const FINISH: &str = r#"
-- Replies without data, shared by every result that gets them.
local OK, GONE, TAKEN = {'OK'}, {'C', 'gone'}, {'C', 'taken'}

-- The reply for execution `eid`, no longer running: `OK` if its record
-- says this result (status `status`, fence `fence1` in the record,
-- finished at `fa`) was applied, else taken or gone. `tid` is its task
-- ('' unknown).
local function settled(eid, status, fence1, fa, tid)
  if tid == '' then return GONE end
  local function applied(r)
    local _, st, f, at = rec_parts(r)
    return st == status and tonumber(f) == tonumber(fence1) and at == fa
  end
  local r = find_record(tid, eid) or redis.call('HGET', tkey(tid), 'w:' .. eid)
  if r then
    if applied(r) then return OK end
    return TAKEN
  end
  if redis.call('EXISTS', tkey(tid)) == 1 then return TAKEN end
  return GONE
end

-- The result whose arguments start at ARGV[at]; returns its reply and the
-- index of the next result's arguments.
local function finish_one(at)
  local m, tid, rec, node, lease, flags =
    ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5]
  local tracked, retry, aside, eid = '0', '', '', nil
  local next_at = at + 6
  if flags ~= '' then
    if string.find(flags, 't', 1, true) then tracked = '1' end
    if string.find(flags, 'r', 1, true) then
      retry = ARGV[next_at]
      next_at = next_at + 1
    end
    if string.find(flags, 'a', 1, true) then
      aside = ARGV[next_at]
      next_at = next_at + 1
    end
  end
  if m == '' or redis.call('ZREM', LEASES, m) == 0 then
    -- Not running as the client knew it: started elsewhere, rewritten
    -- as tracked, or ended.
    local status, fence1, fa
    eid, status, fence1, fa = rec_parts(rec)
    local found = find_member(eid)
    if not found then return settled(eid, status, fence1, fa, tid), next_at end
    local _, f, tr, c = member_parts(found)
    if tonumber(f) + 1 ~= tonumber(fence1) then return TAKEN, next_at end
    redis.call('ZREM', LEASES, found)
    if m == '' then rec = rec .. c end
    m, tid, tracked = found, exec_meta(c), tr
  end
  if retry ~= '' or aside ~= '' or tracked == '1' then
    eid = eid or string.match(rec, '^[^|]*')
  end
  keep_record(tid, eid, rec, retry)
  if aside ~= '' then redis.call('HSET', okey(tid), eid, aside) end
  if tracked ~= '1' then return OK, next_at end
  local _, _, _, c = member_parts(m)
  local _, _, trig = exec_meta(c)
  local _, status, _, fa = rec_parts(rec)
  local started, slease = after_end(tid, eid, trig, status, retry, node, fa, lease)
  if started then return {'OK', started, slease}, next_at end
  return OK, next_at
end

local out = {}
local at = 4
for _ = 1, tonumber(ARGV[3]) do
  use_base(ARGV[at])
  local n = tonumber(ARGV[at + 1])
  at = at + 2
  for _ = 1, n do
    out[#out + 1], at = finish_one(at)
  end
end
flush()
return out
"#;

/// Takes over expired leases. ARGV[3..]: now, node, lease_until (for
/// queued occurrences started here), the most to take over.
/// Returns a list of `{'A', record}` (abandoned) and `{'S', member,
/// lease}` (started) replies.
const RECOVER: &str = r#"
local now, node, lease, limit = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local out = {}
if limit <= 0 then return out end
local WHY = why_tail('lease expired: its scheduler stopped renewing it')
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', '(' .. now, 'LIMIT', 0, limit)
for _, m in ipairs(expired) do
  local eid, fence, tracked, c = member_parts(m)
  local tid, att, trig = exec_meta(c)
  local mr, bo = unpack(redis.call('HMGET', tkey(tid), 'mr', 'bo'))
  local rec
  if mr then
    local retry = ''
    if tonumber(att) <= tonumber(mr) then
      retry = fmt(tonumber(now) + backoff_ms(bo, att) * 1000)
    end
    rec = end_exec(tid, m, 'abandoned', now, '', retry, WHY)
    out[#out + 1] = {'A', rec}
    if tracked == '1' then
      local started, slease = after_end(tid, eid, trig, 'abandoned', retry, node, now, lease)
      if started then out[#out + 1] = {'S', started, slease} end
    end
  else
    -- Its task is gone (deleting a task drops its leases; this is only
    -- left by an interrupted write): nothing to record.
    redis.call('ZREM', LEASES, m)
  end
end
flush()
return out
"#;

/// One task's history. ARGV[3..]: task id, tenant, offset, limit, status
/// ("" any). Returns `{'notfound'}` or `{total, item, item, ...}`, newest
/// (by scheduled_for, then attempt, then id) first, where an item is
/// `{'E', record}` (`{'E', record, text}` when its error and output are
/// kept aside) or, for a running execution, `{'R', member, lease}`.
const HISTORY: &str = r#"
local tid, tn, offset, limit, status =
  ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local t = tkey(tid)
if redis.call('HGET', t, 'tn') ~= tn then return {'notfound'} end
local items = {}
local function add(eid, c, reply)
  local _, att, _, sf = exec_meta(c)
  items[#items + 1] = {tonumber(sf), att, eid, reply}
end
local function add_record(r)
  local eid, st, _, _, _, c = rec_parts(r)
  if status == '' or st == status then add(eid, c, {'E', r}) end
end
for _, r in ipairs(redis.call('LRANGE', lkey(tid), 0, RETENTION - 1)) do add_record(r) end
local f = redis.call('HGETALL', t)
for k = 1, #f, 2 do
  if string.sub(f[k], 1, 2) == 'w:' then add_record(f[k + 1]) end
end
if status == '' or status == 'running' then
  for _, pair in ipairs(running_of(tid)) do
    local eid, _, _, c = member_parts(pair[1])
    add(eid, c, {'R', pair[1], pair[2]})
  end
end
table.sort(items, function(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  if a[2] ~= b[2] then return a[2] > b[2] end
  return a[3] > b[3]
end)
local out = {#items}
local o = okey(tid)
for k = offset + 1, math.min(offset + limit, #items) do
  local item = items[k][4]
  if item[1] == 'E' and aside_id(item[2]) then
    item[3] = redis.call('HGET', o, items[k][3]) or nil
  end
  out[#out + 1] = item
end
return out
"#;

/// A script of `parts` (helpers, then the body), behind [`BASE`].
fn script(parts: &[&str]) -> Script {
    Script::new(&[&[BASE], parts].concat().concat())
}

pub(crate) static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[CREATE]));
pub(crate) static UPDATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[EXEC_READ, UPDATE]));
pub(crate) static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[EXEC_READ, DELETE]));
pub(crate) static CLAIM_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[FMT, EXEC_READ, EXEC_WRITE, RUN_LIST, RFC3339, CLAIM]));
pub(crate) static RENEW_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[EXEC_READ, FIND, RENEW]));
pub(crate) static FINISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        FMT, EXEC_READ, EXEC_WRITE, RUN_LIST, AFTER_END, FIND, FINISH,
    ])
});
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

/// The key layout this version writes, recorded in `{prefix}:conf`
/// (`layout`) by the first store to connect. Layout 2 (2026-11-29) keeps
/// an execution as one string (module docs); layout 1, with a hash per
/// execution, left no `layout` field. (The scripts' arguments are not part
/// of the layout: instances of different versions on one prefix each call
/// their own scripts.)
pub(crate) const LAYOUT: &str = "2";

/// The prefix's settings, without [`BASE`]: `KEYS[1]` `{prefix}:conf`,
/// `ARGV[1]` the partition count, `ARGV[2]` the layout. Records both if
/// the prefix is new; returns the recorded partition count and layout
/// (`1` for a prefix set up before layouts were recorded).
const CONF: &str = r#"
if redis.call('HSETNX', KEYS[1], 'partitions', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'layout', ARGV[2])
end
local p, l = unpack(redis.call('HMGET', KEYS[1], 'partitions', 'layout'))
return {p, l or '1'}
"#;

pub(crate) static CONF_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CONF));
