//! How tasks, executions and times are written to Redis and read back, and
//! how Redis failures map onto [`tickwheel::Error`].
//!
//! Times are decimal microseconds since the Unix epoch (the store keeps
//! microsecond precision, as PostgreSQL does). A task is a hash: its whole
//! definition as JSON in `d`, plus the fields the scripts read or write
//! (`nr` next run, `lr` last run, `v` version, `en` enabled, `st` status,
//! `ov` overlap, `mr` max retries, `bo` backoff, `cr` is cron, `bk` runs
//! tracked, `tn` tenant, `rv` revision, `run` running executions, `q`
//! queued occurrence); `nr`, `lr` and `st` override the JSON, which is only
//! rewritten by updates. An execution is one string: a lease member while
//! it runs ([`lease_member`]), a record once it ended
//! ([`exec_from_record`]); both end with its immutable part (see
//! [`exec_encoding`]). Layouts in `scripts`.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use redis::{RedisError, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tickwheel::{Error, Execution, ExecutionId, ExecutionStatus, Overlap, Task};

pub(crate) const BACKEND: &str = "redis";

/// The task fields a script returns for a task, in this order.
pub(crate) const TASK_FIELDS: [&str; 6] = ["d", "nr", "lr", "v", "en", "st"];

/// A Redis failure as the store contract's error: lost or refused
/// connections, timeouts and cluster reconfiguration are
/// [`Error::Unavailable`]; anything else is [`Error::Backend`].
pub(crate) fn redis_error(e: RedisError) -> Error {
    use redis::ErrorKind as K;
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            K::BusyLoadingError
                | K::MasterDown
                | K::ReadOnly
                | K::ClusterConnectionNotFound
                | K::TryAgain
                | K::ClusterDown
        );
    if transient {
        Error::Unavailable {
            backend: BACKEND,
            source: Box::new(e),
        }
    } else {
        Error::Backend {
            backend: BACKEND,
            source: Box::new(e),
        }
    }
}

/// A reply that does not have the shape the scripts write.
pub(crate) fn corrupt(what: impl Into<String>) -> Error {
    Error::Backend {
        backend: BACKEND,
        source: what.into().into(),
    }
}

/// `t` in microseconds, as text.
pub(crate) fn micros(t: DateTime<Utc>) -> String {
    t.timestamp_micros().to_string()
}

/// `t` cut to the microsecond, as the store keeps it.
pub(crate) fn trunc(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A time written by [`micros`] (or a score Redis formatted).
pub(crate) fn parse_micros(text: &[u8]) -> Result<DateTime<Utc>, Error> {
    let s = std::str::from_utf8(text).map_err(|_| corrupt("time is not text"))?;
    let us = match s.parse::<i64>() {
        Ok(us) => us,
        // Scores come back as doubles; they hold microseconds exactly.
        Err(_) => s
            .parse::<f64>()
            .map_err(|_| corrupt(format!("bad time {s:?}")))? as i64,
    };
    DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt(format!("time out of range {s:?}")))
}

/// The serde name of a unit enum variant (`"timed_out"`).
pub(crate) fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The variant of a unit enum from its serde name.
pub(crate) fn parse_name<T: DeserializeOwned>(text: &[u8]) -> Result<T, Error> {
    let s = std::str::from_utf8(text).map_err(|_| corrupt("name is not text"))?;
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| corrupt(format!("unknown name {s:?}")))
}

fn text(bytes: &[u8]) -> Result<String, Error> {
    String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("stored text is not UTF-8"))
}

fn number<T: std::str::FromStr>(bytes: &[u8]) -> Result<T, Error> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt("bad stored number"))
}

/// The immutable part of an execution, which ends its lease member and
/// its record: task id, attempt (10 digits), trigger, scheduled_for and
/// started_at separated by spaces (the scripts read the first four), a
/// space, then tenant and node, each as its length in bytes, `:`, and the
/// bytes. The scripts write the same for the runs they start.
pub(crate) fn exec_encoding(e: &Execution) -> String {
    let trigger = name_of(&e.trigger);
    let mut out = String::with_capacity(100 + e.tenant.len() + e.node.len());
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{} {:010} {trigger} {} {} {}:{}{}:{}",
        e.task_id,
        e.attempt,
        e.scheduled_for.timestamp_micros(),
        e.started_at.timestamp_micros(),
        e.tenant.len(),
        e.tenant,
        e.node.len(),
        e.node
    );
    out
}

/// The parts of an [`exec_encoding`]: task id, attempt, trigger,
/// scheduled_for, started_at, tenant, node.
fn decode_encoding(c: &[u8]) -> Result<[&[u8]; 7], Error> {
    let bad = || corrupt("bad execution encoding");
    let mut parts: [&[u8]; 7] = [&[]; 7];
    let mut rest = c;
    for part in &mut parts[..5] {
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        *part = &rest[..space];
        rest = &rest[space + 1..];
    }
    for part in &mut parts[5..] {
        let colon = rest.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let len: usize = number(&rest[..colon])?;
        let end = (colon + 1).checked_add(len).ok_or_else(bad)?;
        *part = rest.get(colon + 1..end).ok_or_else(bad)?;
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok(parts)
}

/// A time field that is empty for none.
fn opt_micros(value: &[u8]) -> Result<Option<DateTime<Utc>>, Error> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse_micros(value).map(Some)
    }
}

/// An execution with every time cut to the microsecond, as stored.
pub(crate) fn trunc_exec(mut e: Execution) -> Execution {
    e.scheduled_for = trunc(e.scheduled_for);
    e.started_at = trunc(e.started_at);
    e.finished_at = e.finished_at.map(trunc);
    e.lease_until = e.lease_until.map(trunc);
    e.retry_at = e.retry_at.map(trunc);
    e
}

/// The lease member of a running execution: `<id>|<fence>|<tracked>|<c>`
/// (`tracked`: its end updates its task), `c` its [`exec_encoding`].
pub(crate) fn lease_member(id: ExecutionId, fence: u64, tracked: bool, c: &str) -> String {
    let mut out = String::with_capacity(c.len() + 44);
    // Writing to a String cannot fail.
    let _ = write!(out, "{id}|{fence}|{}|{c}", u8::from(tracked));
    out
}

/// The fence, tracked flag and encoding of a [`lease_member`].
pub(crate) fn member_parts(m: &str) -> Option<(&str, &str, &str)> {
    let mut parts = m.splitn(4, '|');
    let _id = parts.next()?;
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// Most bytes of error and output together kept in a record; longer ones
/// are kept aside (see `scripts`).
pub(crate) const INLINE_TEXT_MAX: usize = 256;

/// The error and output part of a record, `<error length>|<output
/// length>|<error><output>` (a length empty for none), and "". When the two
/// texts are longer than [`INLINE_TEXT_MAX`] together: the part without
/// them, its error length marked with `*`, and the texts to keep aside.
pub(crate) fn record_tail(error: Option<&str>, output: Option<&str>) -> (String, String) {
    let len = |t: Option<&str>| t.map(|t| t.len().to_string()).unwrap_or_default();
    let (e, o) = (error.unwrap_or_default(), output.unwrap_or_default());
    let aside = e.len() + o.len() > INLINE_TEXT_MAX;
    let mut tail = String::with_capacity(16 + if aside { 0 } else { e.len() + o.len() });
    if aside {
        tail.push('*');
    }
    tail.push_str(&len(error));
    tail.push('|');
    tail.push_str(&len(output));
    tail.push('|');
    let mut texts = String::new();
    let target = if aside { &mut texts } else { &mut tail };
    target.push_str(e);
    target.push_str(o);
    (tail, texts)
}

/// Splits `n` `|`-terminated fields off the front of `s`.
fn fields<const N: usize>(mut s: &[u8]) -> Result<([&[u8]; N], &[u8]), Error> {
    let mut out: [&[u8]; N] = [&[]; N];
    for part in &mut out {
        let bar = s
            .iter()
            .position(|&b| b == b'|')
            .ok_or_else(|| corrupt("bad execution record"))?;
        *part = &s[..bar];
        s = &s[bar + 1..];
    }
    Ok((out, s))
}

/// A running execution from its lease member and the member's score (its
/// lease end; `inf` for none).
pub(crate) fn exec_from_member(member: &[u8], lease: &[u8]) -> Result<Execution, Error> {
    let ([id, fence, _tracked], c) = fields::<3>(member)?;
    let lease_until = if lease == b"inf" {
        None
    } else {
        Some(parse_micros(lease)?)
    };
    let [task, attempt, trigger, sf, sa, tenant, node] = decode_encoding(c)?;
    Ok(Execution {
        id: text(id)?.parse().map_err(|_| corrupt("bad execution id"))?,
        task_id: text(task)?.parse().map_err(|_| corrupt("bad task id"))?,
        tenant: text(tenant)?,
        scheduled_for: parse_micros(sf)?,
        started_at: parse_micros(sa)?,
        finished_at: None,
        duration_ms: None,
        attempt: number(attempt)?,
        status: ExecutionStatus::Running,
        error: None,
        output: None,
        node: text(node)?,
        trigger: parse_name(trigger)?,
        lease_until,
        fence: number(fence)?,
        retry_at: None,
    })
}

/// An execution id and its task id, as stored.
pub(crate) type Ids<'a> = (&'a [u8], &'a [u8]);

/// The execution id and task id of a record whose error and output are
/// kept aside; `None` for a record that holds them.
pub(crate) fn kept_aside(rec: &[u8]) -> Result<Option<Ids<'_>>, Error> {
    let ([id, .., el, _], c) = fields::<8>(rec)?;
    if el.first() != Some(&b'*') {
        return Ok(None);
    }
    let [task, ..] = decode_encoding(c)?;
    Ok(Some((id, task)))
}

/// An ended execution from its record (layout in `scripts`), with its
/// error and output if they are kept aside.
pub(crate) fn exec_from_record(rec: &[u8], aside: Option<&[u8]>) -> Result<Execution, Error> {
    let ([id, status, fence, fa, sa, retry, el, ol], rest) = fields::<8>(rec)?;
    let len = |l: &[u8]| -> Result<Option<usize>, Error> {
        if l.is_empty() {
            Ok(None)
        } else {
            number(l).map(Some)
        }
    };
    let bad = || corrupt("bad execution record");
    // The texts: in the record before the encoding, or kept aside.
    let (el, texts, c) = match el.split_first() {
        Some((b'*', el)) => {
            let texts =
                aside.ok_or_else(|| corrupt("an execution's error and output are missing"))?;
            (el, texts, rest)
        }
        _ => {
            let n = len(el)?.unwrap_or(0) + len(ol)?.unwrap_or(0);
            let (texts, c) = rest.split_at_checked(n).ok_or_else(bad)?;
            (el, texts, c)
        }
    };
    let (el, ol) = (len(el)?, len(ol)?);
    let (error, output) = texts.split_at_checked(el.unwrap_or(0)).ok_or_else(bad)?;
    if output.len() != ol.unwrap_or(0) {
        return Err(bad());
    }
    let [task, attempt, trigger, sf, claimed, tenant, node] = decode_encoding(c)?;
    let started_at = match opt_micros(sa)? {
        Some(at) => at,
        None => parse_micros(claimed)?,
    };
    let finished_at = opt_micros(fa)?;
    Ok(Execution {
        id: text(id)?.parse().map_err(|_| corrupt("bad execution id"))?,
        task_id: text(task)?.parse().map_err(|_| corrupt("bad task id"))?,
        tenant: text(tenant)?,
        scheduled_for: parse_micros(sf)?,
        started_at,
        finished_at,
        duration_ms: finished_at.map(|fa| duration_ms(started_at, fa)),
        attempt: number(attempt)?,
        status: parse_name(status)?,
        error: el.map(|_| text(error)).transpose()?,
        output: ol.map(|_| text(output)).transpose()?,
        node: text(node)?,
        trigger: parse_name(trigger)?,
        lease_until: None,
        fence: number(fence)?,
        retry_at: opt_micros(retry)?,
    })
}

/// An execution from a history reply item: `[E, record]`, `[E, record,
/// its texts kept aside]`, or `[R, member, lease]` for a running one.
pub(crate) fn exec_from_reply(items: &[Vec<u8>]) -> Result<Execution, Error> {
    match items {
        [e, rec] if e == b"E" => exec_from_record(rec, None),
        [e, rec, texts] if e == b"E" => exec_from_record(rec, Some(texts)),
        [r, member, lease] if r == b"R" => exec_from_member(member, lease),
        _ => Err(corrupt("bad execution reply")),
    }
}

/// Whole milliseconds from `from` to `to` (0 if `to` is earlier), from the
/// stored microseconds: not stored, every end computed it this way.
fn duration_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    u64::try_from(to.timestamp_micros() - from.timestamp_micros()).map_or(0, |us| us / 1000)
}

/// The hash fields a task is written with (besides `d`, `tn`, `rv`).
pub(crate) struct TaskFields {
    pub(crate) d: String,
    pub(crate) next_run: String,
    pub(crate) last_run: String,
    pub(crate) version: String,
    pub(crate) enabled: &'static str,
    pub(crate) status: String,
    pub(crate) overlap: String,
    pub(crate) max_retries: String,
    pub(crate) backoff_ms: String,
    pub(crate) is_cron: &'static str,
    /// `1` if the task's runs are tracked on it: its overlap policy looks
    /// at what runs, or it is a one-time task (settled by its run).
    pub(crate) bookkeeping: &'static str,
}

impl TaskFields {
    pub(crate) fn of(task: &Task) -> Result<Self, Error> {
        Ok(Self {
            d: serde_json::to_string(task).map_err(|e| corrupt(e.to_string()))?,
            next_run: task.next_run.map(micros).unwrap_or_default(),
            last_run: task.last_run.map(micros).unwrap_or_default(),
            version: task.version.to_string(),
            enabled: if task.enabled { "1" } else { "0" },
            status: name_of(&task.status),
            overlap: name_of(&task.policy.overlap),
            max_retries: task.policy.max_retries.to_string(),
            backoff_ms: task.policy.retry_backoff_ms.to_string(),
            is_cron: if task.schedule.is_some() { "1" } else { "0" },
            bookkeeping: if task.policy.overlap != Overlap::Allow || task.schedule.is_none() {
                "1"
            } else {
                "0"
            },
        })
    }
}

/// A task with its bookkeeping times cut to the microsecond, as stored.
pub(crate) fn trunc_task(mut task: Task) -> Task {
    task.next_run = task.next_run.map(trunc);
    task.last_run = task.last_run.map(trunc);
    task
}

/// A task from the [`TASK_FIELDS`] of its hash; `None` if `d` is absent
/// (the task does not exist).
pub(crate) fn task_from_fields(f: &[Option<Vec<u8>>]) -> Result<Option<Task>, Error> {
    let Some(Some(d)) = f.first() else {
        return Ok(None);
    };
    let task: Task = serde_json::from_slice(d).map_err(|e| corrupt(format!("stored task: {e}")))?;
    overlay(task, f).map(Some)
}

/// `task` (a definition read earlier) with the bookkeeping of the
/// [`TASK_FIELDS`] `f` (whose `d` is not looked at).
pub(crate) fn overlay(mut task: Task, f: &[Option<Vec<u8>>]) -> Result<Task, Error> {
    let get = |i: usize| f.get(i).and_then(|v| v.as_deref());
    task.next_run = get(1).map(parse_micros).transpose()?;
    task.last_run = get(2).map(parse_micros).transpose()?;
    if let Some(v) = get(3) {
        task.version = number(v)?;
    }
    if let Some(en) = get(4) {
        task.enabled = en == b"1";
    }
    if let Some(st) = get(5) {
        task.status = parse_name(st)?;
    }
    Ok(task)
}

/// The bytes of a bulk or simple string reply; `None` for nil.
pub(crate) fn bytes(v: &Value) -> Result<Option<Vec<u8>>, Error> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b.clone())),
        Value::SimpleString(s) => Ok(Some(s.clone().into_bytes())),
        Value::Okay => Ok(Some(b"OK".to_vec())),
        Value::Int(i) => Ok(Some(i.to_string().into_bytes())),
        other => Err(corrupt(format!("expected a string, got {other:?}"))),
    }
}

/// The items of an array reply.
pub(crate) fn array(v: Value) -> Result<Vec<Value>, Error> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt(format!("expected an array, got {other:?}"))),
    }
}

/// An array of strings (nil items are errors).
pub(crate) fn strings(items: &[Value]) -> Result<Vec<Vec<u8>>, Error> {
    items
        .iter()
        .map(|v| bytes(v)?.ok_or_else(|| corrupt("unexpected nil")))
        .collect()
}

/// An array of optional strings.
pub(crate) fn opt_strings(items: &[Value]) -> Result<Vec<Option<Vec<u8>>>, Error> {
    items.iter().map(bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickwheel::{ExecutionStatus, NewTask, Trigger};

    #[test]
    fn execution_records_round_trip() {
        let now: DateTime<Utc> = "2030-01-01T00:00:00.123456789Z".parse().unwrap();
        let mut task = NewTask::cron("n", "a", "* * * * *")
            .validate("t{x}|\"12:", now)
            .unwrap();
        // The model refuses NUL; the codec must still carry any byte.
        task.tenant = "t\0{x}|\"12:".into();
        let mut e = Execution::start(
            &task,
            now,
            3,
            Trigger::Retry,
            "node \u{1}:5:",
            now,
            now + chrono::Duration::seconds(30),
        );
        e.status = ExecutionStatus::TimedOut;
        e.error = Some(String::new());
        e.output = Some("a|b\0c".into());
        e.retry_at = Some(now);
        e.finished_at = Some(now + chrono::Duration::microseconds(7_999));
        e.duration_ms = Some(7);
        let e = trunc_exec(e);
        // The record a script writes for it, and the texts kept aside.
        let rec_and_aside = |e: &Execution| {
            let (tail, aside) = record_tail(e.error.as_deref(), e.output.as_deref());
            let rec = format!(
                "{}|{}|{}|{}||{}|{tail}{}",
                e.id,
                name_of(&e.status),
                e.fence,
                e.finished_at.map(micros).unwrap_or_default(),
                e.retry_at.map(micros).unwrap_or_default(),
                exec_encoding(e)
            );
            (rec, aside)
        };
        let rec = |e: &Execution| rec_and_aside(e).0;
        let mut ended = e.clone();
        ended.lease_until = None;
        assert_eq!(
            exec_from_record(rec(&ended).as_bytes(), None).unwrap(),
            ended
        );
        assert_eq!(kept_aside(rec(&ended).as_bytes()).unwrap(), None);
        assert_eq!(e.started_at.timestamp_subsec_nanos(), 123_456_000);
        let mut none = ended.clone();
        none.error = None;
        none.output = None;
        assert_eq!(exec_from_record(rec(&none).as_bytes(), None).unwrap(), none);
        // Long texts are kept aside: the record holds neither, and reads
        // back whole with them.
        let mut long = ended.clone();
        long.error = Some("e|".repeat(100));
        long.output = Some("o\0".repeat(30));
        let (r, aside) = rec_and_aside(&long);
        assert_eq!(aside.len(), 260);
        assert!(!r.contains("e|e|"));
        let id = long.id.to_string();
        let task = long.task_id.to_string();
        assert_eq!(
            kept_aside(r.as_bytes()).unwrap(),
            Some((id.as_bytes(), task.as_bytes()))
        );
        assert_eq!(
            exec_from_record(r.as_bytes(), Some(aside.as_bytes())).unwrap(),
            long
        );
        assert!(exec_from_record(r.as_bytes(), None).is_err());
        assert!(exec_from_record(r.as_bytes(), Some(b"short")).is_err());
        // The duration counts from the actual start when one is stored,
        // and is never negative.
        let later = rec(&ended).replacen(
            "||",
            &format!("|{}|", micros(now + chrono::Duration::seconds(1))),
            1,
        );
        assert_eq!(
            exec_from_record(later.as_bytes(), None)
                .unwrap()
                .duration_ms,
            Some(0)
        );
        assert!(exec_from_record(b"x|succeeded|1|", None).is_err());
        // A running one reads back from its lease member and score.
        let mut running = e.clone();
        running.status = ExecutionStatus::Running;
        (running.error, running.output, running.retry_at) = (None, None, None);
        (running.finished_at, running.duration_ms) = (None, None);
        let member = lease_member(running.id, running.fence, true, &exec_encoding(&running));
        let lease = running.lease_until.map(micros).unwrap();
        assert_eq!(
            exec_from_member(member.as_bytes(), lease.as_bytes()).unwrap(),
            running
        );
        assert_eq!(
            exec_from_member(member.as_bytes(), b"inf")
                .unwrap()
                .lease_until,
            None
        );
    }

    #[test]
    fn encodings_before_1970_round_trip() {
        let at: DateTime<Utc> = "1969-07-20T20:17:40.000001Z".parse().unwrap();
        let task = NewTask::cron("n", "a", "* * * * *")
            .validate("t", at)
            .unwrap();
        let e = Execution::start(&task, at, 1, Trigger::Schedule, "", at, at);
        let c = exec_encoding(&e);
        let parts = decode_encoding(c.as_bytes()).unwrap();
        assert_eq!(parts[1], b"0000000001");
        assert_eq!(parse_micros(parts[3]).unwrap(), at);
        assert_eq!(parts[6], b"");
    }

    #[test]
    fn task_fields_round_trip() {
        let now: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        let task = NewTask::cron("n", "a", "* * * * *")
            .validate("t", now)
            .unwrap();
        let f = TaskFields::of(&task).unwrap();
        let fields = vec![
            Some(f.d.into_bytes()),
            Some(f.next_run.into_bytes()),
            None,
            Some(f.version.into_bytes()),
            Some(f.enabled.as_bytes().to_vec()),
            Some(f.status.into_bytes()),
        ];
        assert_eq!(task_from_fields(&fields).unwrap(), Some(task));
        assert_eq!(task_from_fields(&[None]).unwrap(), None);
    }

    #[test]
    fn scores_parse_as_micros() {
        let t = parse_micros(b"1893456060000000").unwrap();
        assert_eq!(micros(t), "1893456060000000");
        assert_eq!(parse_micros(b"1.89345606e+15").unwrap(), t);
        assert!(parse_micros(b"soon").is_err());
    }
}
