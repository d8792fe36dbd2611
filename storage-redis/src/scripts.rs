//! The Lua scripts: every write the store makes is one of these, run
//! atomically by Redis (EVALSHA, loaded on first use).
//!
//! Calling convention: `KEYS[1]` is a key of the partition the script works
//! on (it routes the call in a cluster; every key a script touches carries
//! the same hash tag), `ARGV[1]` is the partition's key base `{prefix:pK}`
//! and `ARGV[2]` the retention. Times are decimal microseconds since the
//! Unix epoch, exact as Lua numbers (doubles) until the year 2255; they are
//! written back with `%.0f`, never with `tostring`. Strings coming from the
//! client (names, errors, output) are only ever stored and returned, never
//! interpreted, so any bytes are fine.
//!
//! Layout under the base `B` (see the crate docs): `B:t:<task>` task hash,
//! `B:r:<task>` set of its running executions, `B:h:<task>` its history
//! (score `scheduled_for`, member `<attempt, 10 digits>:<execution id>`),
//! `B:x:<execution>` execution hash, `B:due` / `B:leases` / `B:retry` the
//! partition's due, lease and retry indexes, `B:tn:<tenant>` the tenant's
//! tasks in this partition (score 0, member the id, so lexical = id order).

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by every script (prepended to each).
const PRELUDE: &str = r#"
local RETENTION = tonumber(ARGV[2])
-- The partition's key base and index keys; batch scripts switch partitions
-- per item with use_base (on a single server a batch may span them).
local B, DUE, LEASES, RETRY
local function use_base(base)
  B = base
  DUE, LEASES, RETRY = base .. ':due', base .. ':leases', base .. ':retry'
end
use_base(ARGV[1])
local function tkey(tid) return B .. ':t:' .. tid end
local function rkey(tid) return B .. ':r:' .. tid end
local function hkey(tid) return B .. ':h:' .. tid end
local function xkey(eid) return B .. ':x:' .. eid end
local function fmt(n) return string.format('%.0f', n) end
local TASK_FIELDS = {'d', 'nr', 'lr', 'v', 'en', 'st'}

-- The value of `name` in a flat field/value list.
local function field(f, name)
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end

local function attempt_prefix(att)
  return string.format('%010d', tonumber(att)) .. ':'
end

-- The task as the client reads it: TASK_FIELDS, or nothing if deleted.
local function task_reply(tid)
  local t = tkey(tid)
  if redis.call('EXISTS', t) == 0 then return {} end
  return redis.call('HMGET', t, unpack(TASK_FIELDS))
end

-- An execution as a flat field/value list (HGETALL).
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
      if st ~= 'running' and not retry then
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

-- Inserts a new execution (flat field list with at least id, sf, att, st);
-- false if (scheduled_for, attempt) is taken.
local function insert_exec(tid, f)
  local eid, sf, att = field(f, 'id'), field(f, 'sf'), field(f, 'att')
  local prefix = attempt_prefix(att)
  local h = hkey(tid)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', h, sf, sf)) do
    if string.sub(m, 1, 11) == prefix then return false end
  end
  local x = xkey(eid)
  local values = {}
  for i = 1, #f, 2 do
    if f[i] ~= 'id' then
      values[#values + 1] = f[i]
      values[#values + 1] = f[i + 1]
    end
  end
  redis.call('HSET', x, unpack(values))
  redis.call('ZADD', h, sf, prefix .. eid)
  if field(f, 'st') == 'running' then
    redis.call('SADD', rkey(tid), eid)
    local lease = field(f, 'lease')
    if lease then redis.call('ZADD', LEASES, lease, eid) end
  end
  trim(tid)
  return true
end

-- Ends a running execution: status, fence bump, lease dropped; `extra`
-- (field/value list) is written with it, `drop` (fields) removed.
local function end_running(tid, eid, status, fa, err, extra, drop)
  local x = xkey(eid)
  local sa, fence = unpack(redis.call('HMGET', x, 'sa', 'fence'))
  redis.call('ZREM', LEASES, eid)
  local dur = tonumber(fa) - tonumber(sa)
  if dur < 0 then dur = 0 end
  local set = {'st', status, 'fence', fmt(tonumber(fence) + 1), 'fa', fa,
    'dur', fmt(math.floor(dur / 1000))}
  local del = {'lease'}
  if err then
    set[#set + 1] = 'err'
    set[#set + 1] = err
  else
    del[#del + 1] = 'err'
  end
  for _, v in ipairs(extra or {}) do set[#set + 1] = v end
  for _, v in ipairs(drop or {}) do del[#del + 1] = v end
  redis.call('HSET', x, unpack(set))
  redis.call('HDEL', x, unpack(del))
  redis.call('SREM', rkey(tid), eid)
end

-- A one-time task whose scheduled run ended without a retry is done.
local function settle_one_time(tid, trig, status, retry)
  if trig == 'manual' or retry then return end
  local t = tkey(tid)
  local cr = redis.call('HGET', t, 'cr')
  if cr ~= '0' then return end
  if status == 'succeeded' then
    redis.call('HSET', t, 'st', 'completed')
  else
    redis.call('HSET', t, 'st', 'failed')
  end
  redis.call('HINCRBY', t, 'rv', 1)
end

-- Starts the queued occurrence of a task if nothing else of it runs.
local function start_queued(tid, node, now, lease, new_id)
  local t = tkey(tid)
  local q = redis.call('HGET', t, 'q')
  if not q then return nil end
  if redis.call('SCARD', rkey(tid)) > 0 then return nil end
  redis.call('HDEL', t, 'q')
  local sf, att, trig = string.match(q, '^([^|]+)|([^|]+)|([^|]+)$')
  local f = {'id', new_id, 'task', tid, 'tn', redis.call('HGET', t, 'tn'), 'sf', sf,
    'sa', now, 'att', att, 'st', 'running', 'node', node, 'trig', trig, 'lease', lease,
    'fence', '1'}
  redis.call('HSET', t, 'lr', now)
  if insert_exec(tid, f) then return f end
  return nil
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
local owner, rv = unpack(redis.call('HMGET', t, 'tn', 'rv'))
if owner ~= tn then return 'notfound' end
if rv ~= seen then return 'retry' end
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
redis.call('DEL', h, rkey(tid), t)
redis.call('ZREM', DUE, tid)
redis.call('ZREM', B .. ':tn:' .. tn, tid)
redis.call('PUBLISH', channel, msg)
return 'ok'
"#;

/// Claims, each applied atomically and independently. ARGV[3] = `1` if
/// this call is a re-send of one whose reply was lost, ARGV[4] = number of
/// claims, then per claim: partition base, task id, kind (`S`cheduled,
/// `R`etry, `M`anual), for S: expected next_run, expected version, new
/// next_run ("" none); for R: the failed execution id; then the number of
/// missed records and each as (field count, fields...); then the execution
/// as (field count, fields...), count 0 for none.
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
local function read_fields()
  local n = tonumber(nxt())
  local f = {}
  for k = 1, n do f[k] = nxt() end
  return f
end

-- {'L', task fields} from an HMGET of d, nr, lr, v, en, st (d nil: gone).
local function lost_reply(d, nr, lr, v, en, st)
  if not d then return {'L'} end
  return {'L', d, nr, lr, v, en, st}
end

local function lost(tid)
  local t = tkey(tid)
  return lost_reply(unpack(redis.call('HMGET', t, unpack(TASK_FIELDS))))
end

-- The reply of a claim applied before (same execution id), or nil.
local function replay(tid, exec)
  if not RESEND or not exec then return nil end
  local eid = field(exec, 'id')
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

local SKIPPED_WHY = 'the previous run was still running'

local function skipped(exec, now)
  local s = {}
  for k = 1, #exec, 2 do
    local name = exec[k]
    if name ~= 'st' and name ~= 'lease' and name ~= 'fa' and name ~= 'dur' and name ~= 'err' then
      s[#s + 1] = name
      s[#s + 1] = exec[k + 1]
    end
  end
  for _, v in ipairs({'st', 'skipped', 'fa', now, 'dur', '0', 'err', SKIPPED_WHY}) do
    s[#s + 1] = v
  end
  return s
end

-- Starts `exec`, or applies the task's overlap policy if a run of it is
-- still running. `set` holds task fields to write with a started run.
local function start_or_overlap(tid, exec, set)
  local t = tkey(tid)
  local now = field(exec, 'sa')
  local replaced = {}
  if redis.call('SCARD', rkey(tid)) > 0 then
    local ov, q = unpack(redis.call('HMGET', t, 'ov', 'q'))
    if ov == 'queue_one' and not q then
      redis.call('HSET', t, 'q',
        field(exec, 'sf') .. '|' .. field(exec, 'att') .. '|' .. field(exec, 'trig'))
      return {'Q'}
    elseif ov == 'skip' or ov == 'queue_one' then
      local s = skipped(exec, now)
      if insert_exec(tid, s) then
        local out = {'K'}
        for _, v in ipairs(s) do out[#out + 1] = v end
        return out
      end
      return lost(tid)
    elseif ov == 'replace' then
      local why = 'replaced by the run for ' .. rfc3339(field(exec, 'sf'))
      local running = redis.call('SMEMBERS', rkey(tid))
      table.sort(running)
      for _, rid in ipairs(running) do
        end_running(tid, rid, 'abandoned', now, why)
        replaced[#replaced + 1] = rid
      end
    end
  end
  if not insert_exec(tid, exec) then return lost(tid) end
  set[#set + 1] = 'lr'
  set[#set + 1] = now
  redis.call('HSET', t, unpack(set))
  if #replaced == 0 then return {'S'} end
  local out = {'R'}
  for _, rid in ipairs(replaced) do out[#out + 1] = rid end
  return out
end

local function claim_one(tid, kind, exp_nr, exp_v, new_nr, failed, missed, exec)
  local t = tkey(tid)
  -- Task fields written with a started run (next_run, for a scheduled one).
  local set = {}
  if kind == 'S' then
    local d, nr, lr, v, en, st = unpack(redis.call('HMGET', t, unpack(TASK_FIELDS)))
    if en ~= '1' or nr ~= exp_nr or v ~= exp_v then
      return replay(tid, exec) or lost_reply(d, nr, lr, v, en, st)
    end
    if new_nr ~= '' then
      redis.call('ZADD', DUE, new_nr, tid)
      set = {'nr', new_nr}
    else
      redis.call('ZREM', DUE, tid)
      redis.call('HDEL', t, 'nr')
    end
    redis.call('HINCRBY', t, 'rv', 1)
    if #missed > 0 then
      local tn = redis.call('HGET', t, 'tn')
      for _, m in ipairs(missed) do
        m[#m + 1] = 'tn'
        m[#m + 1] = tn
        insert_exec(tid, m)
      end
    end
    if not exec then
      if #set > 0 then redis.call('HSET', t, unpack(set)) end
      return {'A'}
    end
  else
    if redis.call('EXISTS', t) == 0 then return {'L'} end
    if kind == 'R' then
      local x = xkey(failed)
      local owner, retry = unpack(redis.call('HMGET', x, 'task', 'retry'))
      if owner ~= tid or not retry then
        return replay(tid, exec) or lost(tid)
      end
      redis.call('ZREM', RETRY, failed)
      redis.call('HDEL', x, 'retry')
    else
      local r = replay(tid, exec)
      if r then return r end
    end
    if not exec then return {'A'} end
  end
  local out = start_or_overlap(tid, exec, set)
  if out[1] ~= 'S' and out[1] ~= 'R' and #set > 0 then
    redis.call('HSET', t, unpack(set))
  end
  return out
end

local n = tonumber(ARGV[4])
local out = {}
for c = 1, n do
  use_base(nxt())
  local tid, kind = nxt(), nxt()
  local exp_nr, exp_v, new_nr, failed
  if kind == 'S' then
    exp_nr, exp_v, new_nr = nxt(), nxt(), nxt()
  elseif kind == 'R' then
    failed = nxt()
  end
  local missed = {}
  for m = 1, tonumber(nxt()) do missed[m] = read_fields() end
  local exec = read_fields()
  if #exec == 0 then exec = nil end
  out[c] = claim_one(tid, kind, exp_nr, exp_v, new_nr, failed, missed, exec)
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
/// status, finished_at, has_error, error, has_output, output, retry_at (""
/// none), node, lease_until, id for a queued occurrence started here.
/// Returns one reply per result: `{'OK'}`, `{'OK', started execution
/// fields}`, `{'C', 'gone'}`, `{'C', 'taken'}` or `{'I'}` (status
/// `running`). The same result sent twice (a reply lost with the
/// connection) is `{'OK'}` the second time.
const FINISH: &str = r#"
local function finish_one(eid, fence, status, fa, has_err, err, has_out, output, retry, node,
    lease, new_id)
  local x = xkey(eid)
  local st, xf, tid, trig, xfa =
    unpack(redis.call('HMGET', x, 'st', 'fence', 'task', 'trig', 'fa'))
  if not st then return {'C', 'gone'} end
  if st ~= 'running' or xf ~= fence then
    if st == status and tonumber(xf) == tonumber(fence) + 1 and xfa == fa then
      return {'OK'}
    end
    return {'C', 'taken'}
  end
  if status == 'running' then return {'I'} end
  local e = nil
  if has_err == '1' then e = err end
  local extra, drop = {}, {}
  if has_out == '1' then
    extra = {'out', output}
  else
    drop = {'out'}
  end
  local awaiting = nil
  if retry ~= '' and status ~= 'succeeded' then
    extra[#extra + 1] = 'retry'
    extra[#extra + 1] = retry
    redis.call('ZADD', RETRY, retry, eid)
    awaiting = retry
  end
  end_running(tid, eid, status, fa, e, extra, drop)
  settle_one_time(tid, trig, status, awaiting)
  local started = start_queued(tid, node, fa, lease, new_id)
  trim(tid)
  local out = {'OK'}
  if started then
    for _, v in ipairs(started) do out[#out + 1] = v end
  end
  return out
end

local out = {}
local i = 4
for c = 1, tonumber(ARGV[3]) do
  use_base(ARGV[i])
  out[c] = finish_one(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5],
    ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10], ARGV[i + 11],
    ARGV[i + 12])
  i = i + 13
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
local WHY = 'lease expired: its scheduler stopped renewing it'
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', '(' .. now, 'LIMIT', 0, limit)
for j, eid in ipairs(expired) do
  local x = xkey(eid)
  local tid, st, att, trig = unpack(redis.call('HMGET', x, 'task', 'st', 'att', 'trig'))
  if st ~= 'running' then
    redis.call('ZREM', LEASES, eid)
  else
    end_running(tid, eid, 'abandoned', now, WHY)
    local mr, bo = unpack(redis.call('HMGET', tkey(tid), 'mr', 'bo'))
    local retry = nil
    if mr and tonumber(att) <= tonumber(mr) then
      retry = fmt(tonumber(now) + backoff_ms(bo, att) * 1000)
      redis.call('HSET', x, 'retry', retry)
      redis.call('ZADD', RETRY, retry, eid)
    end
    settle_one_time(tid, trig, 'abandoned', retry)
    local started = start_queued(tid, node, now, lease, ARGV[5 + j])
    local a = {'A'}
    for _, v in ipairs(exec_reply(eid)) do a[#a + 1] = v end
    out[#out + 1] = a
    if started then
      local s = {'S'}
      for _, v in ipairs(started) do s[#s + 1] = v end
      out[#out + 1] = s
    end
  end
end
return out
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
