//! Insert + expire one million timers: `tickwheel::TimingWheel` against a
//! `std::collections::BinaryHeap` and `tokio_util::time::DelayQueue`.
//!
//! Run with `cargo bench -p tickwheel-benches --bench wheel`.
//!
//! Every iteration inserts 1,000,000 timers with `u64` values, deadlines
//! `now + offset`, then moves time past the last deadline in one jump and
//! takes timers out one at a time until none is left. Criterion reports
//! elements per second for the whole insert + expire cycle, so its per-element
//! time is the cost of one timer's insert plus its expiry.
//!
//! - **TimingWheel**: `insert(now + offset, i)` for every timer, then
//!   `poll(end)` until `None`.
//! - **BinaryHeap**: `BinaryHeap<Reverse<(deadline, seq, value)>>`, the usual
//!   way to get the same `(deadline, insertion order)` expiry order; push every
//!   timer, then `pop` while the top's deadline is at or before `end`.
//! - **DelayQueue**: on a current-thread tokio runtime with paused time
//!   (`start_paused(true)`): `insert_at(i, start + offset)` for every timer,
//!   `tokio::time::advance` past the last deadline, then `poll_expired`
//!   (through `std::future::poll_fn`) until `Ready(None)`. Its expiry order
//!   within a millisecond is unspecified. This measures the queue as a tokio
//!   program uses it, including the `Sleep` it re-arms after each expiry; the
//!   runtime's own work is one `advance` per iteration.
//!
//! Each structure is created once per benchmark and reused by every iteration
//! (steady state: the slab, record pool, heap and `DelayQueue` storage are
//! already allocated, so the loop measures insert and expire, not the
//! allocator). The wheel's slab entries are freed in expiry order, scattered
//! over the slab for random deadlines; the wheel reuses the first 64 of them
//! from a small stack and then the lowest free index, so the next
//! iteration's inserts fill the slab in address order. Values are summed
//! into a `black_box` so no work is optimised away.
//!
//! Workloads: offsets `0..1_000_000` ms in insertion order (one timer per
//! ms), `0..600_000` ms in insertion order (10 minutes, ~1.7 timers per ms)
//! and uniformly random in `0..1_000_000` ms. One more group drives the wheel
//! and the heap like a timer thread that wakes every millisecond
//! (`poll(t)` / pop for `t` in `now..=end`), which DelayQueue is left out of
//! because a million `advance` calls would measure the tokio runtime.
//!
//! The bench prints the wheel's per-timer storage
//! (`TimingWheel::<u64>::ENTRY_BYTES`: 32 bytes on x86-64, a 24-byte slab
//! entry and an 8-byte slot record) before running. Counting everything the
//! wheel allocates, by capacity, the random workload takes about 32.4 bytes
//! per timer; the wheel's unit test `random_workload_fits_64_bytes_per_timer`
//! measures it.
//!
//! Needs tokio's `test-util` feature for `start_paused` and `advance`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::poll_fn;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use tickwheel::TimingWheel;
use tokio_util::time::DelayQueue;

/// Timers per iteration.
const TIMERS: usize = 1_000_000;

/// The benchmark workloads: a name and the deadline offsets (ms) in insertion order.
fn workloads() -> Vec<(&'static str, Vec<u64>)> {
    let n = TIMERS as u64;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let random = (0..n)
        .map(|_| {
            // xorshift64*: deterministic, no extra dependency.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D) % 1_000_000
        })
        .collect();
    vec![
        ("spread 0..1M ms", (0..n).collect()),
        (
            "spread 0..10 min",
            (0..n).map(|i| i * 600_000 / n).collect(),
        ),
        ("random 0..1M ms", random),
    ]
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(TIMERS as u64));
}

/// Inserts every timer, then expires them all with one jump of time.
fn wheel_cycle(wheel: &mut TimingWheel<u64>, offsets: &[u64], last: u64) -> u64 {
    let base = wheel.now();
    for (value, &offset) in offsets.iter().enumerate() {
        wheel.insert(base + offset, value as u64);
    }
    let end = base + last;
    let mut sum = 0u64;
    while let Some((_, deadline, value)) = wheel.poll(end) {
        sum = sum.wrapping_add(deadline ^ value);
    }
    debug_assert!(wheel.is_empty());
    sum
}

/// As [`wheel_cycle`], with a poll loop at every millisecond.
fn wheel_cycle_ticking(wheel: &mut TimingWheel<u64>, offsets: &[u64], last: u64) -> u64 {
    let base = wheel.now();
    for (value, &offset) in offsets.iter().enumerate() {
        wheel.insert(base + offset, value as u64);
    }
    let mut sum = 0u64;
    for now in base..=base + last {
        while let Some((_, deadline, value)) = wheel.poll(now) {
            sum = sum.wrapping_add(deadline ^ value);
        }
    }
    debug_assert!(wheel.is_empty());
    sum
}

/// A binary-heap timer queue with the wheel's ordering.
#[derive(Debug, Default)]
struct HeapQueue {
    now: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<(u64, u64, u64)>>,
}

impl HeapQueue {
    fn insert(&mut self, deadline: u64, value: u64) {
        self.heap.push(Reverse((deadline, self.seq, value)));
        self.seq += 1;
    }

    fn poll(&mut self, now: u64) -> Option<(u64, u64)> {
        self.now = self.now.max(now);
        match self.heap.peek() {
            Some(&Reverse((deadline, _, _))) if deadline <= self.now => self
                .heap
                .pop()
                .map(|Reverse((deadline, _, value))| (deadline, value)),
            _ => None,
        }
    }
}

fn heap_cycle(queue: &mut HeapQueue, offsets: &[u64], last: u64) -> u64 {
    let base = queue.now;
    for (value, &offset) in offsets.iter().enumerate() {
        queue.insert(base + offset, value as u64);
    }
    let end = base + last;
    let mut sum = 0u64;
    while let Some((deadline, value)) = queue.poll(end) {
        sum = sum.wrapping_add(deadline ^ value);
    }
    debug_assert!(queue.heap.is_empty());
    sum
}

fn heap_cycle_ticking(queue: &mut HeapQueue, offsets: &[u64], last: u64) -> u64 {
    let base = queue.now;
    for (value, &offset) in offsets.iter().enumerate() {
        queue.insert(base + offset, value as u64);
    }
    let mut sum = 0u64;
    for now in base..=base + last {
        while let Some((deadline, value)) = queue.poll(now) {
            sum = sum.wrapping_add(deadline ^ value);
        }
    }
    debug_assert!(queue.heap.is_empty());
    sum
}

async fn delay_queue_cycle(queue: &mut DelayQueue<u64>, offsets: &[u64], last: u64) -> u64 {
    let base = tokio::time::Instant::now();
    for (value, &offset) in offsets.iter().enumerate() {
        queue.insert_at(value as u64, base + Duration::from_millis(offset));
    }
    tokio::time::advance(Duration::from_millis(last + 1)).await;
    let mut sum = 0u64;
    let mut expired = 0;
    while let Some(item) = poll_fn(|cx| queue.poll_expired(cx)).await {
        sum = sum.wrapping_add(item.into_inner());
        expired += 1;
    }
    assert_eq!(expired, offsets.len(), "DelayQueue expired every timer");
    sum
}

fn bench_insert_expire(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");

    for (name, offsets) in workloads() {
        let last = offsets.iter().copied().max().unwrap_or(0);
        let mut group = c.benchmark_group(format!("insert+expire 1M/{name}"));
        configure(&mut group);

        let mut wheel = TimingWheel::new();
        wheel.reserve(TIMERS);
        group.bench_function("TimingWheel", |b| {
            b.iter(|| black_box(wheel_cycle(&mut wheel, &offsets, last)));
        });

        let mut heap = HeapQueue {
            heap: BinaryHeap::with_capacity(TIMERS),
            ..HeapQueue::default()
        };
        group.bench_function("BinaryHeap", |b| {
            b.iter(|| black_box(heap_cycle(&mut heap, &offsets, last)));
        });

        // The queue must be created inside the runtime: it reads tokio's
        // (paused) clock.
        let mut queue = runtime.block_on(async { DelayQueue::with_capacity(TIMERS) });
        group.bench_function("DelayQueue", |b| {
            b.iter(|| black_box(runtime.block_on(delay_queue_cycle(&mut queue, &offsets, last))));
        });
        group.finish();
    }

    let (name, offsets) = workloads().swap_remove(0);
    let last = offsets.iter().copied().max().unwrap_or(0);
    let mut group = c.benchmark_group(format!("insert+expire 1M, poll every ms/{name}"));
    configure(&mut group);
    let mut wheel = TimingWheel::new();
    wheel.reserve(TIMERS);
    group.bench_function("TimingWheel", |b| {
        b.iter(|| black_box(wheel_cycle_ticking(&mut wheel, &offsets, last)));
    });
    let mut heap = HeapQueue {
        heap: BinaryHeap::with_capacity(TIMERS),
        ..HeapQueue::default()
    };
    group.bench_function("BinaryHeap", |b| {
        b.iter(|| black_box(heap_cycle_ticking(&mut heap, &offsets, last)));
    });
    group.finish();
}

fn main() {
    println!(
        "TimingWheel storage: {} bytes per timer (slab entry + slot record, T = u64)",
        TimingWheel::<u64>::ENTRY_BYTES
    );
    let mut criterion = Criterion::default().configure_from_args();
    bench_insert_expire(&mut criterion);
    criterion.final_summary();
}
