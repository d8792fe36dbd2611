//! Model test: `TimingWheel` against a `BinaryHeap<Reverse<(deadline, seq)>>`.
//!
//! Random sequences of inserts (near, medium, huge and past deadlines),
//! cancels (of live, expired, cancelled and never-issued keys), single polls,
//! full drains, big time jumps and backwards `now`s. After every operation the
//! wheel must agree with the model on what expired (same order, deadlines and
//! values), on cancel results, on `next_deadline`, `deadline` and `len`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use proptest::prelude::*;
use tickwheel::{TimerKey, TimingWheel};

/// Ticks spanned by the wheel's levels (64^6).
const SPAN: u64 = 1 << 36;

#[derive(Clone, Debug)]
enum Op {
    /// Insert at `now + offset`.
    Insert(u64),
    /// Insert at `now - offset`.
    InsertPast(u64),
    /// Cancel the n-th key ever issued (modulo), whatever its state.
    Cancel(usize),
    /// `poll` once at `now + delta`.
    PollOne(u64),
    /// `poll` at `now + delta` until nothing is due.
    PollAll(u64),
    /// `poll` once at `now - back`, which must act as `now`.
    PollBackwards(u64),
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0..200u64,
        3 => 0..300_000u64,
        1 => 0..(1u64 << 40),
    ]
}

fn delta() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0..100u64,
        3 => 0..300_000u64,
        1 => 0..(1u64 << 40),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => offset().prop_map(Op::Insert),
        1 => (0..1_000u64).prop_map(Op::InsertPast),
        3 => any::<usize>().prop_map(Op::Cancel),
        4 => delta().prop_map(Op::PollOne),
        2 => delta().prop_map(Op::PollAll),
        1 => (0..1_000u64).prop_map(Op::PollBackwards),
    ]
}

fn start() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        // Just before an epoch boundary of the levels: near timers overflow.
        (1..5u64, 0..400_000u64).prop_map(|(epoch, back)| epoch * SPAN - back),
        0..(1u64 << 50),
        // Deadlines saturate at `u64::MAX`.
        (0..(1u64 << 41)).prop_map(|back| u64::MAX - back),
    ]
}

/// The reference: a binary heap ordered by `(deadline, seq)`, with lazy
/// deletion for cancels.
#[derive(Debug, Default)]
struct Model {
    now: u64,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    live: HashMap<u64, String>,
}

impl Model {
    fn drop_dead_top(&mut self) {
        while let Some(Reverse((_, seq))) = self.heap.peek() {
            if self.live.contains_key(seq) {
                break;
            }
            self.heap.pop();
        }
    }

    fn poll(&mut self, now: u64) -> Option<(u64, String)> {
        self.now = self.now.max(now);
        self.drop_dead_top();
        let &Reverse((deadline, seq)) = self.heap.peek()?;
        if deadline > self.now {
            return None;
        }
        self.heap.pop();
        Some((deadline, self.live.remove(&seq).expect("live top")))
    }

    fn next_deadline(&mut self) -> Option<u64> {
        self.drop_dead_top();
        self.heap.peek().map(|&Reverse((deadline, _))| deadline)
    }
}

/// One issued key, with what the model knows about it.
struct Issued {
    key: TimerKey,
    seq: u64,
    deadline: u64,
}

fn run(start: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut wheel = TimingWheel::with_now(start);
    let mut model = Model {
        now: start,
        ..Model::default()
    };
    let mut issued: Vec<Issued> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Insert(_) | Op::InsertPast(_) => {
                let deadline = match *op {
                    Op::Insert(offset) => model.now.saturating_add(offset),
                    Op::InsertPast(offset) => model.now.saturating_sub(offset),
                    _ => unreachable!(),
                };
                let seq = issued.len() as u64;
                let value = format!("timer {seq}");
                let key = wheel.insert(deadline, value.clone());
                model.heap.push(Reverse((deadline, seq)));
                model.live.insert(seq, value);
                issued.push(Issued { key, seq, deadline });
            }
            Op::Cancel(pick) => {
                if issued.is_empty() {
                    continue;
                }
                let target = &issued[pick % issued.len()];
                let expected = model.live.remove(&target.seq);
                prop_assert_eq!(
                    wheel.cancel(target.key),
                    expected,
                    "step={} op={:?}",
                    step,
                    op
                );
            }
            Op::PollOne(delta) => {
                let now = model.now.saturating_add(delta);
                let got = wheel
                    .poll(now)
                    .map(|(_, deadline, value)| (deadline, value));
                prop_assert_eq!(got, model.poll(now), "step={} op={:?}", step, op);
            }
            Op::PollAll(delta) => {
                let now = model.now.saturating_add(delta);
                loop {
                    let got = wheel
                        .poll(now)
                        .map(|(_, deadline, value)| (deadline, value));
                    let expected = model.poll(now);
                    prop_assert_eq!(&got, &expected, "step={} op={:?}", step, op);
                    if got.is_none() {
                        break;
                    }
                }
            }
            Op::PollBackwards(back) => {
                let now = model.now.saturating_sub(back);
                let got = wheel
                    .poll(now)
                    .map(|(_, deadline, value)| (deadline, value));
                prop_assert_eq!(got, model.poll(now), "step={} op={:?}", step, op);
            }
        }
        prop_assert_eq!(wheel.now(), model.now, "step={}", step);
        prop_assert_eq!(wheel.len(), model.live.len(), "step={}", step);
        prop_assert_eq!(wheel.is_empty(), model.live.is_empty(), "step={}", step);
        prop_assert_eq!(
            wheel.next_deadline(),
            model.next_deadline(),
            "step={} op={:?}",
            step,
            op
        );
        if let Some(last) = issued.last() {
            // Spot-check `deadline` on the newest key and one older key.
            for probe in [last, &issued[step % issued.len()]] {
                let expected = model
                    .live
                    .contains_key(&probe.seq)
                    .then_some(probe.deadline);
                prop_assert_eq!(
                    wheel.deadline(probe.key),
                    expected,
                    "step={} seq={}",
                    step,
                    probe.seq
                );
            }
        }
    }

    // Everything left comes out in model order too.
    let mut rest = Vec::new();
    wheel.drain_expired(u64::MAX, &mut rest);
    let rest: Vec<_> = rest
        .into_iter()
        .map(|(_, deadline, value)| (deadline, value))
        .collect();
    let mut expected = Vec::new();
    while let Some(item) = model.poll(u64::MAX) {
        expected.push(item);
    }
    prop_assert_eq!(rest, expected);
    prop_assert!(wheel.is_empty());
    prop_assert_eq!(wheel.next_deadline(), None);
    Ok(())
}

/// 256 cases, or `PROPTEST_CASES` when set (for long runs).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wheel_matches_binary_heap_model(
        start in start(),
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        run(start, &ops)?;
    }
}

/// A deterministic xorshift64 stream.
fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// Many timers on few deadlines, so that equal deadlines reach a slot by
/// different routes (direct insert, one or several cascades).
#[test]
fn dense_equal_deadlines_match_the_model() {
    let mut ops = Vec::new();
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    for _ in 0..5_000 {
        let r = next();
        ops.push(match r % 10 {
            0..=5 => Op::Insert([0, 63, 64, 4_096, 4_160, 300_000][(r >> 8) as usize % 6]),
            6 => Op::Cancel((r >> 8) as usize),
            7 | 8 => Op::PollOne([0, 1, 64, 4_000][(r >> 8) as usize % 4]),
            _ => Op::PollAll([1, 63, 4_095][(r >> 8) as usize % 3]),
        });
    }
    run(0, &ops).unwrap();
}

/// Cancel-heavy traffic on few slots, so that slots carry tombstones through
/// cascades and expiries, get compacted, and slab entries are reused by new
/// timers while stale keys are still being cancelled.
#[test]
fn cancel_heavy_traffic_matches_the_model() {
    let mut ops = Vec::new();
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    let mut inserted = 0usize;
    for _ in 0..20_000 {
        let r = next();
        let pick = (r >> 8) as usize;
        ops.push(match r % 16 {
            0..=6 => {
                inserted += 1;
                Op::Insert([0, 1, 63, 64, 100, 4_096, 5_000, 70_000, 300_000][pick % 9])
            }
            // Mostly recent keys, whose timers are likely still pending.
            7..=11 => Op::Cancel(inserted.saturating_sub(1 + pick % 64)),
            12 => Op::Cancel(pick),
            13 | 14 => Op::PollOne([0, 1, 64, 4_000][pick % 4]),
            _ => Op::PollAll([1, 63, 4_095, 70_000][pick % 4]),
        });
    }
    run(0, &ops).unwrap();
}
