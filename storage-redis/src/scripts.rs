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
//! the year 2255; they are written back with `%.0f`, never with
//! `tostring`. Strings coming from the client (names, errors, output) are
//! only ever stored and returned, never interpreted, so any bytes are fine.
//!
//! Layout under the base `B` (see the crate docs): `B:t:<task>` task hash,
//! `B:h:<task>` its history (score `scheduled_for`, member `<attempt, 10
//! digits>:<execution id>`), `B:x:<execution>` execution hash, `B:due` /
//! `B:leases` / `B:retry` the partition's due, lease and retry indexes,
//! `B:tn:<tenant>` the tenant's tasks in this partition (score 0, member
//! the id, so lexical = id order).
//!
//! An execution hash holds `c`, the immutable part as the client encoded
//! it (scripts only copy it), copies of the few immutable fields scripts
//! read (`task`, `sa`, `att`, `trig`), and the mutable ones (`st`, `fence`,
//! `lease`, `fa`, `dur`, `err`, `out`, `retry`); an empty value is "none",
//! and `err` / `out` are stored as `=` and the text, so an empty text is
//! not "none". The task hash's `run` field lists its running executions
//! (comma-separated ids), `q` its queued occurrence (`sf|attempt|trigger`,
//! empty for none).

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by every script (prepended to each).
const PRELUDE: &str = r#"
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
local function fmt(n) return string.format('%.0f', n) end
local TASK_FIELDS = {'d', 'nr', 'lr', 'v', 'en', 'st'}

local function none(v) return (not v) or v == '' end

-- A field of the client's immutable encoding: its length, ':', the bytes.
local function lp(s) return #s .. ':' .. s end

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

-- Whether a task's runs are tracked in its `run` list and their ends
-- update the task: only when its overlap policy looks at what runs, or it
-- is a one-time task (settled by its run). Runs of a cron task with
-- `overlap: allow` (the default) leave the task alone when they end.
local function needs_bookkeeping(ov, cr)
  return ov ~= 'allow' or cr ~= '1'
end

local function attempt_prefix(att)
  return string.format('%010d', tonumber(att)) .. ':'
end

-- An execution as a flat field/value list (HGETALL plus its id).
local function exec_reply(eid)
  local f = redis.call('HGETALL', xkey(eid))
  f[#f + 1] = 'id'
  f[#f + 1] = eid
  return f
end

-- Drops the oldest finished executions beyond the retention; running ones
-- and failed ones awaiting a retry are kept whatever their age.
local function trim(tid)
  local h = hkey(tid)
  local excess = redis.call('ZCARD', h) - RETENTION
  if excess <= 0 then return end
  local doomed = {}
  local start = 0
  local size = excess + 1
  while #doomed < excess do
    local chunk = redis.call('ZRANGE', h, start, start + size - 1)
    if #chunk == 0 then break end
    for _, m in ipairs(chunk) do
      local eid = string.sub(m, 12)
      local st, retry = unpack(redis.call('HMGET', xkey(eid), 'st', 'retry'))
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

-- Inserts a new execution `e` (a table: id, sf, att, sa, trig, st, fence,
-- c, and optionally lease, fa, dur, err, tb); false if (scheduled_for,
-- attempt) is taken. `tb` = '1' marks a run whose end updates its task (see
-- needs_bookkeeping).
local function insert_exec(tid, e)
  local prefix = attempt_prefix(e.att)
  local h = hkey(tid)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', h, e.sf, e.sf)) do
    if string.sub(m, 1, 11) == prefix then return false end
  end
  redis.call('HSET', xkey(e.id), 'c', e.c, 'task', tid, 'sa', e.sa, 'att', e.att,
    'trig', e.trig, 'st', e.st, 'fence', e.fence, 'lease', e.lease or '', 'fa', e.fa or '',
    'dur', e.dur or '', 'err', e.err or '', 'tb', e.tb or '0')
  redis.call('ZADD', h, e.sf, prefix .. e.id)
  if e.st == 'running' and not none(e.lease) then
    redis.call('ZADD', LEASES, e.lease, e.id)
  end
  trim(tid)
  return true
end

-- Ends a running execution (its task's `run` list is the caller's to
-- update): status, fence bump, lease dropped, the error (encoded: '' none,
-- else '=' and the text) and the field/value list `extra` written.
local function end_running(eid, sa, fence, status, fa, err, extra)
  local dur = tonumber(fa) - tonumber(sa)
  if dur < 0 then dur = 0 end
  redis.call('ZREM', LEASES, eid)
  redis.call('HSET', xkey(eid), 'st', status, 'fence', fmt(tonumber(fence) + 1), 'fa', fa,
    'dur', fmt(math.floor(dur / 1000)), 'lease', '', 'err', err, unpack(extra or {}))
end

-- After a running execution of a task ended: drop it from the task's
-- running list, settle a one-time task (`completed`, or `failed` when no
-- retry follows), and start the queued occurrence if nothing else runs.
-- Returns the id of the execution started, or nil.
local function after_end(tid, eid, trig, status, retry, node, now, lease, new_id)
  local t = tkey(tid)
  local run, cr, q, tn, rv = unpack(redis.call('HMGET', t, 'run', 'cr', 'q', 'tn', 'rv'))
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
    local sf, att, qtrig = string.match(q, '^([^|]+)|([^|]+)|([^|]+)$')
    set[#set + 1] = 'q'
    set[#set + 1] = ''
    set[#set + 1] = 'lr'
    set[#set + 1] = now
    local e = {id = new_id, sf = sf, att = att, sa = now, trig = qtrig, st = 'running',
      fence = '1', lease = lease, tb = '1',
      c = lp(new_id) .. lp(tid) .. lp(tn) .. lp(sf) .. lp(now) .. lp(att) .. lp(node) .. lp(qtrig)}
    if insert_exec(tid, e) then
      run = new_id
      started = new_id
    end
  end
  redis.call('HSET', t, 'run', run, unpack(set))
  return started
end

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
/// is_cron, channel, message. Returns `ok` or `exists`.
const CREATE: &str = r#"
local tid, d, tn, nr, lr, v, en, st, ov, mr, bo, cr, channel, msg =
  ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11],
  ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16]
local t = tkey(tid)
if redis.call('EXISTS', t) == 1 then return 'exists' end
redis.call('HSET', t, 'd', d, 'tn', tn, 'v', v, 'en', en, 'st', st, 'ov', ov, 'mr', mr,
  'bo', bo, 'cr', cr, 'rv', '1')
if nr ~= '' then redis.call('HSET', t, 'nr', nr) end
if lr ~= '' then redis.call('HSET', t, 'lr', lr) end
if en == '1' and nr ~= '' then redis.call('ZADD', DUE, nr, tid) end
redis.call('ZADD', B .. ':tn:' .. tn, 0, tid)
redis.call('PUBLISH', channel, msg)
return 'ok'
"#;

/// Updates a task if its revision is still the one read. ARGV[3..]: id,
/// tenant, seen revision, d, next_run ("" none), version, enabled, status,
/// overlap, max_retries, backoff_ms, is_cron, channel, message. Returns
/// `ok`, `notfound` or `retry` (the task moved on since it was read).
const UPDATE: &str = r#"
local tid, tn, seen, d, nr, v, en, st, ov, mr, bo, cr, channel, msg =
  ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11],
  ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16]
local t = tkey(tid)
local owner, rv, old_ov, old_cr = unpack(redis.call('HMGET', t, 'tn', 'rv', 'ov', 'cr'))
if owner ~= tn then return 'notfound' end
if rv ~= seen then return 'retry' end
if needs_bookkeeping(ov, cr) and not needs_bookkeeping(old_ov, old_cr) then
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
  'cr', cr)
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
/// scheduled_for); then `0` (no execution) or `1` and the
/// execution's id, scheduled_for, attempt, started_at, trigger, status,
/// fence, lease_until and encoding.
///
/// Returns one reply per claim: `{'S'}` started, `{'K', fields}` skipped,
/// `{'Q'}` queued, `{'R', replaced ids...}` replaced, `{'A'}` advanced,
/// `{'L', task fields...}` lost (`{'L'}` if the task is gone).
///
/// In a re-send, a claim whose execution id is already stored was applied
/// by the first send (its reply was lost with the connection): it is
/// answered as then, not applied twice. Outside a re-send the same claim
/// made twice loses the second time, like any stale claim.
const CLAIM: &str = r#"
local RESEND = ARGV[3] == '1'
local i = 5
local function nxt()
  local v = ARGV[i]
  i = i + 1
  return v
end

local function lost_reply(d, nr, lr, v, en, st)
  if not d then return {'L'} end
  return {'L', d, nr, lr, v, en, st}
end

local function lost(tid)
  return lost_reply(unpack(redis.call('HMGET', tkey(tid), unpack(TASK_FIELDS))))
end

-- The reply of a claim applied before (same execution id, its arguments
-- at ARGV[exec_at]), or nil.
local function replay(tid, exec_at)
  if not RESEND or not exec_at then return nil end
  local eid = ARGV[exec_at]
  local owner, st = unpack(redis.call('HMGET', xkey(eid), 'task', 'st'))
  if owner ~= tid then return nil end
  if st == 'running' then return {'S'} end
  if st == 'skipped' then
    local out = {'K'}
    for _, v in ipairs(exec_reply(eid)) do out[#out + 1] = v end
    return out
  end
  return nil
end

local SKIPPED_WHY = '=the previous run was still running'

-- Starts `exec`, or applies the task's overlap policy if a run of it is
-- still running. `set` holds task fields to write in any case.
local function start_or_overlap(tid, exec, set, run, ov, q)
  local t = tkey(tid)
  local now = exec.sa
  local replaced = {}
  if not none(run) then
    if ov == 'queue_one' and none(q) then
      set[#set + 1] = 'q'
      set[#set + 1] = exec.sf .. '|' .. exec.att .. '|' .. exec.trig
      redis.call('HSET', t, unpack(set))
      return {'Q'}
    elseif ov == 'skip' or ov == 'queue_one' then
      if #set > 0 then redis.call('HSET', t, unpack(set)) end
      exec.st, exec.lease, exec.fa, exec.dur, exec.err = 'skipped', '', now, '0', SKIPPED_WHY
      if insert_exec(tid, exec) then
        local out = {'K'}
        for _, v in ipairs(exec_reply(exec.id)) do out[#out + 1] = v end
        return out
      end
      return lost(tid)
    elseif ov == 'replace' then
      local why = 'replaced by the run for ' .. rfc3339(exec.sf)
      for rid in string.gmatch(run, '[^,]+') do
        local sa, fence = unpack(redis.call('HMGET', xkey(rid), 'sa', 'fence'))
        if sa then
          end_running(rid, sa, fence, 'abandoned', now, '=' .. why)
          replaced[#replaced + 1] = rid
        end
      end
      table.sort(replaced)
      run = ''
    end
  end
  if not insert_exec(tid, exec) then
    if #replaced > 0 then
      set[#set + 1] = 'run'
      set[#set + 1] = ''
    end
    if #set > 0 then redis.call('HSET', t, unpack(set)) end
    return lost(tid)
  end
  if exec.tb == '1' then
    set[#set + 1] = 'run'
    set[#set + 1] = run_add(run, exec.id)
  elseif #replaced > 0 then
    set[#set + 1] = 'run'
    set[#set + 1] = ''
  end
  redis.call('HSET', t, 'lr', now, unpack(set))
  if #replaced == 0 then return {'S'} end
  local out = {'R'}
  for _, rid in ipairs(replaced) do out[#out + 1] = rid end
  return out
end

-- The execution whose arguments start at ARGV[at].
local function read_exec(at)
  return {id = ARGV[at], sf = ARGV[at + 1], att = ARGV[at + 2], sa = ARGV[at + 3],
    trig = ARGV[at + 4], st = ARGV[at + 5], fence = ARGV[at + 6], lease = ARGV[at + 7],
    c = ARGV[at + 8]}
end

local function claim_one(tid, kind, exp_nr, exp_v, new_nr, kv, failed, missed, now, node,
    exec_at)
  local t = tkey(tid)
  local exec = nil
  local set = {}
  local run, ov, q, cr
  if kind == 'S' then
    local d, nr, lr, v, en, st, rv, tn
    d, nr, lr, v, en, st, rv, tn, run, ov, q, cr = unpack(redis.call('HMGET', t, 'd', 'nr',
      'lr', 'v', 'en', 'st', 'rv', 'tn', 'run', 'ov', 'q', 'cr'))
    if en ~= '1' or nr ~= exp_nr or v ~= exp_v then
      -- The claimer's store has the definition at version `kv`: no need to
      -- send it again.
      if d and v == kv then d = '' end
      return replay(tid, exec_at) or lost_reply(d, nr, lr, v, en, st)
    end
    if new_nr ~= '' then
      redis.call('ZADD', DUE, new_nr, tid)
      set = {'nr', new_nr, 'rv', fmt(tonumber(rv) + 1)}
    else
      redis.call('ZREM', DUE, tid)
      redis.call('HDEL', t, 'nr')
      set = {'rv', fmt(tonumber(rv) + 1)}
    end
    for _, m in ipairs(missed) do
      local c = lp(m[1]) .. lp(tid) .. lp(tn) .. lp(m[2]) .. lp(now) .. lp('1') .. lp(node)
        .. lp('schedule')
      insert_exec(tid, {id = m[1], sf = m[2], c = c, att = '1', sa = now,
        trig = 'schedule', st = 'missed', fence = '1', fa = now, dur = '0'})
    end
    if not exec_at then
      redis.call('HSET', t, unpack(set))
      return {'A'}
    end
  else
    local tn
    tn, run, ov, q, cr = unpack(redis.call('HMGET', t, 'tn', 'run', 'ov', 'q', 'cr'))
    if not tn then return {'L'} end
    if kind == 'R' then
      local x = xkey(failed)
      local owner, retry = unpack(redis.call('HMGET', x, 'task', 'retry'))
      if owner ~= tid or none(retry) then
        return replay(tid, exec_at) or lost(tid)
      end
      redis.call('ZREM', RETRY, failed)
      redis.call('HSET', x, 'retry', '')
    else
      local r = replay(tid, exec_at)
      if r then return r end
    end
    if not exec_at then return {'A'} end
  end
  exec = read_exec(exec_at)
  exec.tb = needs_bookkeeping(ov, cr) and '1' or '0'
  return start_or_overlap(tid, exec, set, run, ov, q)
end

local out = {}
for c = 1, tonumber(ARGV[4]) do
  use_base(nxt())
  local tid, kind = nxt(), nxt()
  local exp_nr, exp_v, new_nr, kv, failed
  if kind == 'S' then
    exp_nr, exp_v, new_nr, kv = nxt(), nxt(), nxt(), nxt()
  elseif kind == 'R' then
    failed = nxt()
  end
  local missed, now, node = {}, nil, nil
  local nmissed = tonumber(nxt())
  if nmissed > 0 then
    now, node = nxt(), nxt()
    for m = 1, nmissed do missed[m] = {nxt(), nxt()} end
  end
  -- The execution is read from ARGV only if the claim gets that far.
  local exec = nil
  if nxt() == '1' then
    exec = i
    i = i + 9
  end
  out[c] = claim_one(tid, kind, exp_nr, exp_v, new_nr, kv, failed, missed, now, node, exec)
end
return out
"#;

/// Extends a lease. ARGV[3..]: execution id, fence, until. Returns `ok`,
/// `gone` (no such execution here) or `taken` (fence moved on or it ended).
const RENEW: &str = r#"
local eid, fence, untl = ARGV[3], ARGV[4], ARGV[5]
local x = xkey(eid)
local st, f = unpack(redis.call('HMGET', x, 'st', 'fence'))
if not st then return 'gone' end
if st ~= 'running' or f ~= fence then return 'taken' end
redis.call('HSET', x, 'lease', untl)
redis.call('ZADD', LEASES, untl, eid)
return 'ok'
"#;

/// Records results, each atomically and independently. ARGV[3] = number
/// of results, then per result: partition base, execution id, fence,
/// status, finished_at, error ("" none, else `=` and the text), output
/// (same), retry_at ("" none), node, lease_until, id for a queued
/// occurrence started here, the run's actual start ("" as claimed). Returns one reply per result: `{'OK'}`,
/// `{'OK', started execution fields}`, `{'C', 'gone'}`, `{'C', 'taken'}`
/// or `{'I'}` (status `running`). The same result sent twice (a reply lost
/// with the connection) is `{'OK'}` the second time.
const FINISH: &str = r#"
local function finish_one(eid, fence, status, fa, err, output, retry, node, lease, new_id,
    actual)
  local x = xkey(eid)
  local st, xf, tid, trig, sa, xfa, tb =
    unpack(redis.call('HMGET', x, 'st', 'fence', 'task', 'trig', 'sa', 'fa', 'tb'))
  if not st then return {'C', 'gone'} end
  if st ~= 'running' or xf ~= fence then
    if st == status and tonumber(xf) == tonumber(fence) + 1 and xfa == fa then
      return {'OK'}
    end
    return {'C', 'taken'}
  end
  if status == 'running' then return {'I'} end
  local extra = {'out', output}
  if actual ~= '' then
    sa = actual
    extra[3] = 'sa'
    extra[4] = actual
  end
  if retry ~= '' and status ~= 'succeeded' then
    extra[#extra + 1] = 'retry'
    extra[#extra + 1] = retry
    redis.call('ZADD', RETRY, retry, eid)
  else
    retry = ''
  end
  end_running(eid, sa, xf, status, fa, err, extra)
  if tb ~= '1' then return {'OK'} end
  local started = after_end(tid, eid, trig, status, retry, node, fa, lease, new_id)
  trim(tid)
  if started then
    local out = {'OK'}
    for _, v in ipairs(exec_reply(started)) do out[#out + 1] = v end
    return out
  end
  return {'OK'}
end

local out = {}
local i = 4
for c = 1, tonumber(ARGV[3]) do
  use_base(ARGV[i])
  out[c] = finish_one(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5],
    ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10], ARGV[i + 11])
  i = i + 12
end
return out
"#;

/// Takes over expired leases. ARGV[3..]: now, node, lease_until, then ids
/// for queued occurrences started here (their number is the limit).
/// Returns a list of `{'A', fields}` (abandoned) and `{'S', fields}`
/// (started) replies.
const RECOVER: &str = r#"
local now, node, lease = ARGV[3], ARGV[4], ARGV[5]
local limit = #ARGV - 5
local out = {}
if limit <= 0 then return out end
local WHY = '=lease expired: its scheduler stopped renewing it'
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', '(' .. now, 'LIMIT', 0, limit)
for j, eid in ipairs(expired) do
  local x = xkey(eid)
  local tid, st, att, trig, sa, fence, tb =
    unpack(redis.call('HMGET', x, 'task', 'st', 'att', 'trig', 'sa', 'fence', 'tb'))
  if st ~= 'running' then
    redis.call('ZREM', LEASES, eid)
  else
    local mr, bo = unpack(redis.call('HMGET', tkey(tid), 'mr', 'bo'))
    local retry = ''
    local extra = {}
    if mr and tonumber(att) <= tonumber(mr) then
      retry = fmt(tonumber(now) + backoff_ms(bo, att) * 1000)
      extra = {'retry', retry}
      redis.call('ZADD', RETRY, retry, eid)
    end
    end_running(eid, sa, fence, 'abandoned', now, WHY, extra)
    local started = nil
    if tb == '1' then
      started = after_end(tid, eid, trig, 'abandoned', retry, node, now, lease, ARGV[5 + j])
    end
    local a = {'A'}
    for _, v in ipairs(exec_reply(eid)) do a[#a + 1] = v end
    out[#out + 1] = a
    if started then
      local s = {'S'}
      for _, v in ipairs(exec_reply(started)) do s[#s + 1] = v end
      out[#out + 1] = s
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

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

pub(crate) static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CREATE));
pub(crate) static UPDATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(UPDATE));
pub(crate) static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(DELETE));
pub(crate) static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CLAIM));
pub(crate) static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RENEW));
pub(crate) static FINISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(FINISH));
pub(crate) static RECOVER_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RECOVER));
pub(crate) static DUE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(DUE_PAGE));
pub(crate) static HISTORY_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(HISTORY));

/// Scheduler membership (`Store::heartbeat`), without the prelude: `KEYS[1]`
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
