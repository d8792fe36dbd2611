//! Hierarchical timing wheel over `u64` millisecond ticks.
//!
//! [`TimingWheel`] is pure bookkeeping with no clock inside: the caller passes
//! the current tick to [`TimingWheel::poll`] and gets back the timers that are
//! due. The geometry follows tokio's `runtime/time/wheel`; the slots hold
//! compact records rather than intrusive lists (see *Storage*).
//!
//! # Time
//!
//! One tick is one millisecond by convention; the wheel only sees `u64`s, so
//! any unit works and the spans below scale with it. The wheel's time only
//! moves forward: a `poll` with a smaller tick than an earlier one uses the
//! earlier one. A timer whose deadline is at or before the current time is
//! due at the next `poll`.
//!
//! # Geometry
//!
//! Six levels of 64 slots. A slot of level `n` covers `64^n` ticks, so a
//! level covers `64^(n+1)` ticks:
//!
//! | level | slot width             | level span                 |
//! |-------|------------------------|----------------------------|
//! | 0     | 1 ms                   | 64 ms                      |
//! | 1     | 64 ms                  | 4.096 s                    |
//! | 2     | 4.096 s                | 262.144 s (~4.4 min)       |
//! | 3     | ~4.4 min               | 16 777 s (~4.66 h)         |
//! | 4     | ~4.66 h                | ~12.4 days                 |
//! | 5     | ~12.4 days             | 2^36 ms (~795 days, ~2.18 years) |
//!
//! Let `elapsed` be the tick the levels are positioned at (it trails the
//! caller's `now` while due timers are still being handed out). A timer lives
//! at level `n`, the index of the highest 6-bit group in which its deadline
//! and `elapsed` differ, in the slot given by that group of its deadline. So
//! every timer at level `n` is later than every timer at level `n - 1`, and a
//! level-0 slot holds timers of a single deadline. When `elapsed` reaches the
//! start of an occupied slot at level `n >= 1`, that slot is *cascaded*: its
//! timers move to lower levels. Each timer cascades at most five times.
//! Where a timer is is therefore a function of its deadline and `elapsed`
//! alone; that is how [`TimingWheel::cancel`] finds the slot of a timer that
//! has cascaded since it was inserted.
//!
//! Two ordered side maps, keyed by `(deadline, sequence number)`, hold the
//! timers the levels cannot place:
//!
//! - **overflow**: deadlines in a later 2^36-tick-aligned epoch than
//!   `elapsed`. That is every timer more than 2^36 ms (~2.18 years) away and,
//!   near an epoch boundary, nearer timers that cross it. They move into the
//!   levels when the levels are empty and `elapsed` enters their epoch.
//! - **past-due**: deadlines earlier than `elapsed`, i.e. inserted already
//!   overdue. They are due at once and come out before anything in the levels.
//!
//! # Storage
//!
//! - **Slab.** A timer's value, deadline and unique sequence number (the
//!   generation a [`TimerKey`] is checked against) live in a slab, a `Vec` of
//!   `Option<Timer<T>>`: 24 bytes for `T = u64` on 64-bit targets. Up to 64
//!   freed entries wait on a small stack and are reused first, while they
//!   are likely still cached (a timer re-armed as it expires gets its old
//!   entry back); entries freed while that stack is full are tracked by a
//!   64-ary tree of bitmaps (about one bit per entry) that hands out the
//!   lowest index first, so the inserts after a burst of expiries fill the
//!   slab in address order instead of scattering writes over it. An entry
//!   is written at insert and read at cancel or expiry; cascades above
//!   level 1 do not touch it unless their slot holds tombstones.
//! - **Records.** A slot of level 1 or above is a first-in first-out queue of
//!   8-byte records, `(slab index, deadline offset within the slot)`, kept in
//!   blocks of 64 records chained by index. The blocks come from one pool
//!   shared by all slots and return to it as soon as a cascade has read them,
//!   so the pool holds about `records / 64` blocks plus one partly used
//!   block per occupied slot. A level-0 slot has a single deadline, so
//!   its queue is a `VecDeque` of 4-byte slab indices; it keeps up to 1024
//!   entries of capacity when it empties and frees anything larger.
//! - **Cascades.** Cascading a slot streams its blocks and appends each
//!   record to one of at most 64 lower slots. The cascade of a level-1 slot,
//!   whose timers expire next, also reads their slab entries, a block at a
//!   time in a tight loop: the cache misses that each expiry would otherwise
//!   wait out one after another overlap there.
//! - **Tombstones.** Cancelling a timer in the levels takes its value out of
//!   the slab and leaves its record queued as a tombstone. The slab entry
//!   stays vacant but reserved (not free) until the record is dropped, so a
//!   record is live exactly when its slab entry is occupied and records need
//!   no generation. Each slot counts its tombstones. Expiry and the cascade
//!   of a level-1 slot drop the tombstones they meet; a higher cascade drops
//!   them too if its slot has any (it then reads the slab for each record),
//!   and otherwise does not look at the slab. When a slot's tombstones would
//!   outnumber its live records it is compacted at once. So every occupied
//!   slot holds a live timer, and there is at most one tombstone per live
//!   timer in the levels.
//!
//! [`TimingWheel::ENTRY_BYTES`] is one slab entry plus one record: 32 bytes
//! for `T = u64` on 64-bit targets. On top come about one bit of free-set
//! bitmap per slab entry, the pool's partly used blocks and the level-0
//! queues' spare capacity (bounded constants, under 0.5 MiB together), and,
//! for a cancelled timer whose tombstone is still queued, its reserved slab
//! entry and record. Timers in a side map cost a B-tree entry instead of a
//! record. With the benchmark's one million random deadlines this comes to
//! about 32.4 bytes per timer, by capacity. The slab, the free set and the
//! block pool grow to their peak and are reused, never shrunk, so in steady
//! state neither inserts nor polls allocate. At most `u32::MAX - 1` slab
//! entries (pending timers plus tombstones) can exist at once.
//!
//! # Ordering
//!
//! Timers expire in ascending deadline order, ties broken by insertion order:
//! exactly the order of a `BinaryHeap<Reverse<(deadline, seq)>>`. The slot
//! queues keep this because, in every queue, timers with equal deadlines
//! appear in insertion order: an insert appends the newest timer; a cascade
//! from level `n` happens only while all levels below `n` are empty and
//! appends the records of the queue it empties in queue order; a compaction
//! keeps the order of the records it keeps; and overflow timers migrate into
//! empty levels in `(deadline, seq)` order. A level-0 slot holds a single
//! deadline, so its queue is exactly the expiry order. Tombstones take no
//! part in the order: dropping one never moves a live record past another.
//!
//! # Complexity
//!
//! - `insert`: O(1) (the free set is at most six bitmap words deep); O(log m)
//!   when the timer goes to a side map (m = its size).
//! - `cancel`: O(1) amortised: a compaction costs O(slot length) and runs
//!   only once at least half of the slot's records have died. O(log m) for a
//!   timer in a side map.
//! - `poll`: O(1) amortised per expired or cancelled timer (finding the next
//!   occupied slot is a `trailing_zeros` per level; each record cascades at
//!   most five times).
//! - `next_deadline`: O(1) from a cached minimum; after the earliest timer is
//!   cancelled or expired the cache is rebuilt from the occupancy bitmaps, and
//!   if the earliest slot is above level 0, by one scan of that slot's records
//!   (reading the slab only if the slot holds tombstones).
//!
//! With deadlines in random order and a slab larger than the CPU caches,
//! the remaining cost per timer is mostly the slab write at insert and the
//! batched slab read in the level-1 cascade; the block streams are
//! sequential.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::num::NonZeroU64;
use std::sync::OnceLock;

/// Number of levels.
const LEVELS: usize = 6;
/// log2 of the slots per level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Mask selecting a slot index.
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// log2 of the ticks the levels span together (64^6 = 2^36).
const EPOCH_BITS: u32 = SLOT_BITS * LEVELS as u32;
/// The "no block" link.
const NIL: u32 = u32::MAX;
/// Records per block of the record pool.
const BLOCK_LEN: usize = 64;
/// Capacity a level-0 slot keeps when it empties (4 bytes each).
const TICK_KEEP: usize = 1024;
/// Recently freed slab indices reused first (see `FreeSet`).
const RECENT: usize = 64;

/// Handle to a timer in a [`TimingWheel`], returned by
/// [`TimingWheel::insert`].
///
/// The key carries the timer's slab index and its unique sequence number, so
/// a stale key (its timer expired or was cancelled, and the slab entry was
/// reused by a later timer) never reaches a different timer. Keys are only
/// meaningful to the wheel that issued them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    seq: u64,
}

/// A pending timer's slab entry.
///
/// `repr(C)` puts `seq` first and `deadline` last, so reading both touches
/// the first and the last cache line of an entry (see `count_live`).
#[derive(Debug)]
#[repr(C)]
struct Timer<T> {
    /// Insertion sequence number: the generation checked by [`TimerKey`] and
    /// the tie-breaker in the side maps. Non-zero so that `Option<Timer<T>>`
    /// costs no extra word.
    seq: NonZeroU64,
    value: T,
    deadline: u64,
}

/// A timer's place in the queue of a slot of level 1 or above.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Record {
    /// Slab index. The record is a tombstone when that entry is vacant.
    index: u32,
    /// Deadline minus the start of the slot, `< 64^level`.
    offset: u32,
}

/// A pool block: a run of records, cache-line aligned so a block spans
/// exactly eight lines.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Block([Record; BLOCK_LEN]);

/// A slot's first-in first-out queue of records: a chain of pool blocks from
/// `head` to `tail`. Queues are only ever read whole, by a cascade or a
/// compaction, and only appended to, so every block but the tail is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Queue {
    head: u32,
    tail: u32,
    /// Records queued, tombstones included.
    len: u32,
    /// Tombstones among them; `2 * dead <= len` between calls.
    dead: u32,
}

impl Queue {
    const EMPTY: Self = Self {
        head: NIL,
        tail: NIL,
        len: 0,
        dead: 0,
    };

    /// Records in `block`, one of this queue's blocks.
    fn filled(&self, block: u32) -> usize {
        if block == self.tail {
            (self.len as usize - 1) % BLOCK_LEN + 1
        } else {
            BLOCK_LEN
        }
    }
}

/// A level-0 slot: the slab indices of its timers, which all share one
/// deadline, in insertion order.
#[derive(Debug, Default)]
struct Tick {
    indices: VecDeque<u32>,
    /// Tombstones among `indices`; `2 * dead <= indices.len()` between calls.
    dead: u32,
}

/// The blocks shared by all slot queues.
///
/// Free blocks are handed out like free slab entries (see [`FreeSet`]): a
/// block a cascade has just read is reused at once while it is cached, and
/// otherwise the lowest free block first. So the blocks of a long queue
/// filled by inserts tend to follow each other in memory, in every cycle;
/// a plain last-in first-out free list would reverse their order each time
/// a queue is emptied and refilled.
#[derive(Debug)]
struct Pool {
    blocks: Vec<Block>,
    /// `next[b]`: the block after `b` in its queue, or `NIL` after the tail.
    next: Vec<u32>,
    free: FreeSet,
}

impl Pool {
    const fn new() -> Self {
        Self {
            blocks: Vec::new(),
            next: Vec::new(),
            free: FreeSet::new(),
        }
    }

    fn alloc(&mut self) -> u32 {
        if let Some(block) = self.free.pop() {
            self.next[block as usize] = NIL;
            return block;
        }
        let block = u32::try_from(self.blocks.len())
            .ok()
            .filter(|&block| block != NIL)
            .expect("TimingWheel record pool holds at most u32::MAX - 1 blocks");
        self.blocks.push(Block([Record::default(); BLOCK_LEN]));
        self.next.push(NIL);
        block
    }

    fn release(&mut self, block: u32) {
        self.free.push(block);
    }

    /// Makes room for `total` blocks, free or in use, without reallocating.
    fn reserve_total(&mut self, total: usize) {
        let more = total.saturating_sub(self.blocks.len());
        self.blocks.reserve(more);
        self.next.reserve(more);
        self.free.cover(self.blocks.capacity());
    }
}

/// The free slab indices.
///
/// Up to [`RECENT`] freed indices are kept on a small stack and reused first,
/// last in first out, while their entries are likely still cached: that
/// covers a scheduler re-arming each timer as it expires. Indices freed while
/// the stack is full go into a 64-ary tree of bitmaps that hands out the
/// lowest first, so that after a burst of expiries has freed entries all
/// over the slab, the inserts that follow fill it in address order instead
/// of scattering writes across it.
///
/// Bit `i` of `bits` is set when entry `i` is free. Above it, bit `j` of
/// `summary[0]` is set when word `j` of `bits` is non-zero, and so on up to
/// a last level of one word. Setting or clearing a bit touches one word per
/// level at most, and usually only the word in `bits`: at most six for `u32`
/// indices.
#[derive(Debug)]
struct FreeSet {
    recent: [u32; RECENT],
    recent_len: usize,
    bits: Vec<u64>,
    summary: Vec<Vec<u64>>,
    /// Indices in the bitmaps.
    len: usize,
    /// Every word of `bits` before this one is zero, so while this word has
    /// a bit set, `pop` needs no descent.
    hint: usize,
}

impl FreeSet {
    const fn new() -> Self {
        Self {
            recent: [0; RECENT],
            recent_len: 0,
            bits: Vec::new(),
            summary: Vec::new(),
            len: 0,
            hint: 0,
        }
    }

    fn len(&self) -> usize {
        self.recent_len + self.len
    }

    /// Makes room for indices below `n`.
    fn cover(&mut self, n: usize) {
        let mut words = n.div_ceil(64);
        if self.bits.len() < words {
            self.bits.resize(words, 0);
        }
        let mut level = 0;
        while words > 1 {
            words = words.div_ceil(64);
            if level == self.summary.len() {
                // A new top word, summarising the old top word.
                let below = match level {
                    0 => &self.bits,
                    _ => &self.summary[level - 1],
                };
                let first = below.first().is_some_and(|&word| word != 0);
                self.summary.push(vec![u64::from(first)]);
            }
            if self.summary[level].len() < words {
                self.summary[level].resize(words, 0);
            }
            level += 1;
        }
    }

    #[inline]
    fn push(&mut self, index: u32) {
        if self.recent_len < RECENT {
            self.recent[self.recent_len] = index;
            self.recent_len += 1;
            return;
        }
        let i = index as usize;
        if i / 64 >= self.bits.len() {
            self.cover(i + 1);
        }
        self.len += 1;
        self.hint = self.hint.min(i / 64);
        let word = &mut self.bits[i / 64];
        debug_assert!(
            *word & (1 << (i % 64)) == 0,
            "index freed twice: index={index}"
        );
        let was_empty = *word == 0;
        *word |= 1 << (i % 64);
        if was_empty {
            let mut i = i / 64;
            for level in &mut self.summary {
                let word = &mut level[i / 64];
                let was_empty = *word == 0;
                *word |= 1 << (i % 64);
                if !was_empty {
                    break;
                }
                i /= 64;
            }
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<u32> {
        if self.recent_len > 0 {
            self.recent_len -= 1;
            return Some(self.recent[self.recent_len]);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        let mut w = self.hint;
        if self.bits[w] == 0 {
            w = 0;
            for level in self.summary.iter().rev() {
                w = w * 64 + level[w].trailing_zeros() as usize;
            }
            self.hint = w;
        }
        let word = &mut self.bits[w];
        let index = w * 64 + word.trailing_zeros() as usize;
        *word &= *word - 1;
        if *word == 0 {
            let mut i = w;
            for level in &mut self.summary {
                let word = &mut level[i / 64];
                *word &= !(1 << (i % 64));
                if *word != 0 {
                    break;
                }
                i /= 64;
            }
        }
        Some(index as u32)
    }
}

/// A hierarchical timing wheel: timers with `u64` tick deadlines, O(1)
/// insert and (amortised) cancel, expiring in `(deadline, insertion order)`
/// order.
///
/// The wheel has no clock: the caller passes the current tick (by convention
/// a millisecond) to [`poll`](Self::poll), and time only moves forward.
///
/// - **Geometry**: six levels of 64 slots, a level-`n` slot spanning `64^n`
///   ticks, so the levels cover 2^36 ticks (~2.18 years of milliseconds).
///   Timers beyond that, or already overdue when inserted, are kept in ordered
///   side maps with O(log m) insert and cancel.
/// - **Ordering**: timers expire in ascending deadline order, ties in
///   insertion order, exactly like a `BinaryHeap<Reverse<(deadline, seq)>>`.
/// - **Cost**: O(1) insert, O(1) amortised cancel and expiry (each timer
///   moves down a level at most five times, as an 8-byte record that is
///   streamed, not chased); [`next_deadline`] is exact and normally O(1).
/// - **Memory**: [`ENTRY_BYTES`] per timer in storage that is reused and
///   never shrinks; steady-state inserts do not allocate. See the module
///   documentation for what else counts.
///
/// [`next_deadline`]: Self::next_deadline
/// [`ENTRY_BYTES`]: Self::ENTRY_BYTES
///
/// # Examples
///
/// ```
/// use tickwheel::TimingWheel;
///
/// let mut wheel = TimingWheel::new();
/// let late = wheel.insert(5_000, "late");
/// wheel.insert(100, "first");
/// wheel.insert(100, "second");
/// assert_eq!(wheel.next_deadline(), Some(100));
///
/// // Nothing is due yet at tick 99.
/// assert!(wheel.poll(99).is_none());
///
/// // Equal deadlines come out in insertion order.
/// let (_, deadline, value) = wheel.poll(1_000).unwrap();
/// assert_eq!((deadline, value), (100, "first"));
/// assert_eq!(wheel.poll(1_000).unwrap().2, "second");
/// assert!(wheel.poll(1_000).is_none());
///
/// assert_eq!(wheel.cancel(late), Some("late"));
/// assert!(wheel.is_empty());
/// ```
pub struct TimingWheel<T> {
    /// The slab. An entry is `None` when it is on `free` or reserved by a
    /// tombstone.
    entries: Vec<Option<Timer<T>>>,
    /// Free slab indices, lowest first.
    free: FreeSet,
    /// All pending timers.
    len: usize,
    /// Timers in the levels (not in `past` or `overflow`).
    wheel_len: usize,
    /// Tombstones in the levels: the sum of the queues' `dead`.
    dead: usize,
    next_seq: NonZeroU64,
    /// The latest tick passed to `poll` (or given at construction).
    now: u64,
    /// The tick the levels are positioned at; `elapsed <= now`.
    elapsed: u64,
    /// Bit `s` of `occupied[l]`: slot `s` of level `l` has records.
    occupied: [u64; LEVELS],
    /// Level-0 slots.
    ticks: [Tick; SLOTS],
    /// Slots of levels 1 and up: `upper[level - 1][slot]`.
    upper: [[Queue; SLOTS]; LEVELS - 1],
    pool: Pool,
    past: BTreeMap<(u64, u64), u32>,
    overflow: BTreeMap<(u64, u64), u32>,
    /// Exact minimum deadline in the levels, when known. Meaningless while
    /// `wheel_len == 0`. Filled lazily through `&self` by `next_deadline`.
    wheel_min: OnceLock<u64>,
}

impl<T> fmt::Debug for TimingWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimingWheel")
            .field("now", &self.now)
            .field("elapsed", &self.elapsed)
            .field("len", &self.len)
            .field("wheel_len", &self.wheel_len)
            .field("tombstones", &self.dead)
            .field("past_len", &self.past.len())
            .field("overflow_len", &self.overflow.len())
            .field("occupied", &self.occupied)
            .finish_non_exhaustive()
    }
}

impl<T> Default for TimingWheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Level for `deadline` relative to `elapsed`: the highest 6-bit group in
/// which they differ.
fn level_for(elapsed: u64, deadline: u64) -> usize {
    debug_assert!(
        deadline >= elapsed && (deadline ^ elapsed) >> EPOCH_BITS == 0,
        "deadline outside the levels: deadline={deadline} elapsed={elapsed}"
    );
    let masked = (elapsed ^ deadline) | SLOT_MASK;
    let significant = 63 - masked.leading_zeros();
    (significant / SLOT_BITS) as usize
}

/// Slot of `deadline` at `level`.
fn slot_for(deadline: u64, level: usize) -> usize {
    ((deadline >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize
}

/// `deadline`'s offset from the start of its slot at `level`.
fn offset_for(deadline: u64, level: usize) -> u32 {
    // Below 64^5 = 2^30, so the cast is exact.
    (deadline & ((1u64 << (level as u32 * SLOT_BITS)) - 1)) as u32
}

/// Start tick of `slot` at `level`, for a slot at or after `elapsed`.
fn slot_start(elapsed: u64, level: usize, slot: usize) -> u64 {
    let shift = level as u32 * SLOT_BITS;
    let level_mask = (1u64 << (shift + SLOT_BITS)) - 1;
    (elapsed & !level_mask) + ((slot as u64) << shift)
}

impl<T> TimingWheel<T> {
    /// Bytes of storage per pending timer: `size_of` of one slab entry plus
    /// one 8-byte slot record (32 for `T = u64` on 64-bit targets; a timer in
    /// a level-0 slot takes a 4-byte record).
    ///
    /// Not included: about one bit of free-set bitmap per slab entry, bounded
    /// constants (the record pool's partly used blocks, spare capacity of the
    /// level-0 queues), tombstones of cancelled timers not yet dropped (at
    /// most one per pending timer, each holding a slab entry and a record),
    /// and for timers in the overflow or past-due maps a B-tree entry (24
    /// bytes plus node overhead) in place of the record.
    pub const ENTRY_BYTES: usize = size_of::<Option<Timer<T>>>() + size_of::<Record>();

    /// Creates an empty wheel at tick 0.
    pub fn new() -> Self {
        Self::with_now(0)
    }

    /// Creates an empty wheel at tick `now`.
    pub fn with_now(now: u64) -> Self {
        Self {
            entries: Vec::new(),
            free: FreeSet::new(),
            len: 0,
            wheel_len: 0,
            dead: 0,
            next_seq: NonZeroU64::MIN,
            now,
            elapsed: now,
            occupied: [0; LEVELS],
            ticks: std::array::from_fn(|_| Tick::default()),
            upper: [[Queue::EMPTY; SLOTS]; LEVELS - 1],
            pool: Pool::new(),
            past: BTreeMap::new(),
            overflow: BTreeMap::new(),
            wheel_min: OnceLock::new(),
        }
    }

    /// The wheel's current tick: the largest tick passed to
    /// [`poll`](Self::poll) so far, or the tick it was created at.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reserves room for at least `additional` more timers than are pending
    /// now, so inserts up to that many do not allocate (apart from a level-0
    /// slot's queue growing past its previous size).
    pub fn reserve(&mut self, additional: usize) {
        self.entries
            .reserve(additional.saturating_sub(self.free.len()));
        // Room to free every entry without growing the free set.
        self.free.cover(self.entries.capacity());
        // Full blocks for the new records, plus a partly used block for each
        // slot they may open.
        let in_use = self.pool.blocks.len() - self.pool.free.len();
        self.pool.reserve_total(
            in_use + additional.div_ceil(BLOCK_LEN) + additional.min(LEVELS * SLOTS),
        );
    }

    /// Schedules `value` to expire at tick `deadline` and returns its key.
    ///
    /// A deadline at or before [`now`](Self::now) is due at the next
    /// [`poll`](Self::poll). O(1) (O(log m) for the rare timer that lands in
    /// the overflow or past-due map, see the module documentation).
    ///
    /// # Panics
    ///
    /// If `u32::MAX - 1` slab entries (pending timers plus tombstones of
    /// cancelled ones) are already in use.
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        let index = self.alloc(Timer {
            seq,
            deadline,
            value,
        });
        self.len += 1;
        let seq = seq.get();
        if deadline < self.elapsed {
            self.past.insert((deadline, seq), index);
        } else if (deadline ^ self.elapsed) >> EPOCH_BITS != 0 {
            self.overflow.insert((deadline, seq), index);
        } else {
            self.wheel_add(index, deadline);
        }
        TimerKey { index, seq }
    }

    /// Cancels the timer for `key` and returns its value, or `None` if it
    /// already expired, was cancelled, or `key` is stale.
    ///
    /// O(1) amortised (O(log m) for a timer in the overflow or past-due map).
    /// A timer in the levels leaves a tombstone record in its slot, see the
    /// module documentation.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let deadline = self.lookup(key)?.deadline;
        self.len -= 1;
        if deadline < self.elapsed {
            let removed = self.past.remove(&(deadline, key.seq));
            debug_assert_eq!(
                removed,
                Some(key.index),
                "past map out of sync: key={key:?}"
            );
            return Some(self.release(key.index).value);
        }
        if (deadline ^ self.elapsed) >> EPOCH_BITS != 0 {
            let removed = self.overflow.remove(&(deadline, key.seq));
            debug_assert_eq!(
                removed,
                Some(key.index),
                "overflow map out of sync: key={key:?}"
            );
            return Some(self.release(key.index).value);
        }
        // The entry stays reserved until its record is dropped.
        let timer = self.entries[key.index as usize]
            .take()
            .expect("looked-up entry is occupied");
        let level = level_for(self.elapsed, deadline);
        let slot = slot_for(deadline, level);
        if level == 0 {
            self.ticks[slot].dead += 1;
        } else {
            self.upper[level - 1][slot].dead += 1;
        }
        self.dead += 1;
        self.wheel_len -= 1;
        if self.wheel_len == 0 || self.wheel_min.get() == Some(&deadline) {
            self.wheel_min.take();
        }
        self.compact_if_sparse(level, slot);
        Some(timer.value)
    }

    /// The deadline of the pending timer for `key`, or `None` if it expired,
    /// was cancelled, or `key` is stale.
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.lookup(key).map(|timer| timer.deadline)
    }

    /// The earliest pending deadline, exactly; `None` when empty.
    ///
    /// A caller may sleep until this tick. O(1) from a cached minimum; the
    /// first call after the earliest timer is cancelled or expired rebuilds
    /// the cache (occupancy bitmaps, plus one scan of the earliest slot's
    /// records if it is above level 0).
    pub fn next_deadline(&self) -> Option<u64> {
        if let Some((&(deadline, _), _)) = self.past.first_key_value() {
            return Some(deadline);
        }
        if self.wheel_len > 0 {
            return Some(*self.wheel_min.get_or_init(|| self.compute_wheel_min()));
        }
        self.overflow
            .first_key_value()
            .map(|(&(deadline, _), _)| deadline)
    }

    /// Advances the wheel to tick `now` and removes and returns the next
    /// expired timer as `(key, deadline, value)`, or `None` if no timer has a
    /// deadline at or before `now`.
    ///
    /// Call it repeatedly to drain everything due; timers come out in
    /// ascending deadline order, ties in insertion order. A `now` smaller than
    /// the wheel's current tick is treated as the current tick. The returned
    /// key is already stale.
    pub fn poll(&mut self, now: u64) -> Option<(TimerKey, u64, T)> {
        self.now = self.now.max(now);
        let now = self.now;
        loop {
            // Past-due timers precede everything in the levels.
            if let Some(entry) = self.past.first_entry() {
                let ((deadline, _), index) = entry.remove_entry();
                return Some(self.expire(index, deadline));
            }
            if self.wheel_len > 0 {
                let (level, slot, start) = self.next_expiration();
                if start > now {
                    break;
                }
                if level > 0 {
                    self.cascade(level, slot, start);
                    continue;
                }
                self.elapsed = start;
                return Some(self.expire_level0(slot, start));
            }
            // The levels are empty: jump to the overflow's earliest timer.
            match self.overflow.first_key_value() {
                Some((&(deadline, _), _)) if deadline <= now => {
                    self.elapsed = deadline;
                    self.migrate_overflow();
                }
                _ => break,
            }
        }
        // Nothing is due. Move the levels up to `now` so later inserts land as
        // low as possible; no occupied slot starts at or before `now`, so no
        // timer changes level or slot.
        self.elapsed = now;
        if self.wheel_len == 0 {
            self.migrate_overflow();
        }
        None
    }

    /// Moves every timer due at `now` into `out`, in expiry order, and returns
    /// how many were moved. Equivalent to calling [`poll`](Self::poll) until
    /// it returns `None`.
    pub fn drain_expired(&mut self, now: u64, out: &mut Vec<(TimerKey, u64, T)>) -> usize {
        let before = out.len();
        while let Some(expired) = self.poll(now) {
            out.push(expired);
        }
        out.len() - before
    }

    /// Expires the first live timer of level-0 `slot`, whose deadline is
    /// `start`, dropping the tombstones before it.
    fn expire_level0(&mut self, slot: usize, start: u64) -> (TimerKey, u64, T) {
        let tick = &mut self.ticks[slot];
        let index = loop {
            // `2 * dead <= len` and the slot is occupied, so a live record
            // comes before the queue runs out.
            let index = tick.indices.pop_front().expect("occupied level-0 slot");
            if self.entries[index as usize].is_some() {
                break index;
            }
            tick.dead -= 1;
            self.dead -= 1;
            self.free.push(index);
        };
        self.wheel_len -= 1;
        self.compact_if_sparse(0, slot);
        self.tick_emptied(slot);
        if self.ticks[slot].indices.is_empty() {
            self.wheel_min.take();
        }
        let (key, deadline, value) = self.expire(index, start);
        debug_assert!(
            self.ticks[slot].indices.front().is_none_or(|&next| {
                self.entries[next as usize]
                    .as_ref()
                    .is_none_or(|timer| timer.seq.get() > key.seq)
            }),
            "slot out of insertion order: slot={slot} key={key:?}"
        );
        (key, deadline, value)
    }

    /// Finishes expiring the timer at `index`, which is no longer queued.
    fn expire(&mut self, index: u32, deadline: u64) -> (TimerKey, u64, T) {
        debug_assert!(
            deadline <= self.now,
            "expiring a timer before its deadline: deadline={deadline} now={}",
            self.now
        );
        self.len -= 1;
        let timer = self.release(index);
        debug_assert_eq!(
            timer.deadline, deadline,
            "slot record out of sync with the slab: index={index}"
        );
        let key = TimerKey {
            index,
            seq: timer.seq.get(),
        };
        (key, deadline, timer.value)
    }

    /// The first occupied slot, as `(level, slot, slot start tick)`. Lower
    /// levels always expire first, so this is the lowest non-empty level.
    /// Only call while `wheel_len > 0`.
    fn next_expiration(&self) -> (usize, usize, u64) {
        for (level, &occupied) in self.occupied.iter().enumerate() {
            if occupied == 0 {
                continue;
            }
            let shift = level as u32 * SLOT_BITS;
            let current = ((self.elapsed >> shift) & SLOT_MASK) as u32;
            let slot = occupied.trailing_zeros();
            // Level-0 timers may be due at `elapsed` itself; above level 0 the
            // slot containing `elapsed` was cascaded when it was entered.
            debug_assert!(
                slot > current || (level == 0 && slot == current),
                "occupied slot behind the wheel: level={level} slot={slot} current={current}"
            );
            let slot = slot as usize;
            return (level, slot, slot_start(self.elapsed, level, slot));
        }
        unreachable!(
            "next_expiration on empty levels: wheel_len={}",
            self.wheel_len
        )
    }

    /// Exact minimum deadline in the levels. Only call while `wheel_len > 0`.
    fn compute_wheel_min(&self) -> u64 {
        let (level, slot, start) = self.next_expiration();
        if level == 0 {
            // Every occupied slot holds a live timer.
            return start;
        }
        let queue = self.upper[level - 1][slot];
        let mut min = u32::MAX;
        self.for_each_record(queue, |record| {
            if record.offset < min
                && (queue.dead == 0 || self.entries[record.index as usize].is_some())
            {
                min = record.offset;
            }
        });
        debug_assert!(
            min != u32::MAX,
            "occupied slot without a live record: level={level} slot={slot}"
        );
        start + u64::from(min)
    }

    /// Moves `elapsed` to `start`, the start of slot `slot` at `level >= 1`,
    /// and redistributes that slot's records to lower levels, dropping its
    /// tombstones. All lower levels are empty, so the moved records keep
    /// their relative order.
    fn cascade(&mut self, level: usize, slot: usize, start: u64) {
        debug_assert!(
            self.occupied[..level].iter().all(|&bits| bits == 0),
            "cascade with lower levels occupied: level={level}"
        );
        self.elapsed = start;
        let queue = self.take_queue(level, slot);
        self.dead -= queue.dead as usize;
        let mut block = queue.head;
        let mut dropped = 0;
        while block != NIL {
            let end = queue.filled(block);
            // Only tombstones need the slab, except that level-1 records go
            // to level 0 and expire next: reading their slab entries here,
            // in a tight loop over the block, overlaps the cache misses that
            // each expiry would otherwise wait out one after another.
            let check = queue.dead > 0 || (level == 1 && self.count_live(block, end, start) < end);
            for i in 0..end {
                let record = self.pool.blocks[block as usize].0[i];
                if check && self.entries[record.index as usize].is_none() {
                    self.free.push(record.index);
                    dropped += 1;
                    continue;
                }
                // `start` is aligned to the slot width, which bounds
                // `offset`, so the target level is the highest non-zero group
                // of `offset`.
                let to = ((31 - (record.offset | SLOT_MASK as u32).leading_zeros()) / SLOT_BITS)
                    as usize;
                let deadline = start + u64::from(record.offset);
                debug_assert!(
                    to < level && to == level_for(start, deadline),
                    "cascade did not descend: from={level} to={to} deadline={deadline}"
                );
                let record = Record {
                    index: record.index,
                    offset: offset_for(deadline, to),
                };
                self.push_record(to, slot_for(deadline, to), record);
            }
            let next = self.pool.next[block as usize];
            self.pool.release(block);
            block = next;
        }
        debug_assert_eq!(
            dropped, queue.dead,
            "tombstones miscounted: level={level} slot={slot}"
        );
    }

    /// Live records among the first `end` of `block`, a block of a slot
    /// starting at `start`.
    fn count_live(&self, block: u32, end: usize, start: u64) -> usize {
        self.pool.blocks[block as usize].0[..end]
            .iter()
            .filter(|record| {
                // Reading `deadline` as well as the `Option` tag (`seq`)
                // loads both ends of an entry that straddles cache lines.
                self.entries[record.index as usize]
                    .as_ref()
                    .is_some_and(|timer| timer.deadline >= start)
            })
            .count()
    }

    /// Moves the overflow timers of `elapsed`'s epoch into the levels. Only
    /// call while the levels are empty.
    fn migrate_overflow(&mut self) {
        debug_assert_eq!(self.wheel_len, 0, "migrating into occupied levels");
        while let Some(entry) = self.overflow.first_entry() {
            let (deadline, _) = *entry.key();
            if (deadline ^ self.elapsed) >> EPOCH_BITS != 0 {
                break;
            }
            debug_assert!(
                deadline >= self.elapsed,
                "overflow timer in the past: deadline={deadline} elapsed={}",
                self.elapsed
            );
            let index = entry.remove();
            self.wheel_add(index, deadline);
        }
    }

    /// Queues a timer in the levels and keeps the counters and the cached
    /// minimum up to date.
    fn wheel_add(&mut self, index: u32, deadline: u64) {
        let level = level_for(self.elapsed, deadline);
        let record = Record {
            index,
            offset: offset_for(deadline, level),
        };
        self.push_record(level, slot_for(deadline, level), record);
        if self.wheel_len == 0 {
            self.wheel_min = OnceLock::from(deadline);
        } else if let Some(min) = self.wheel_min.get_mut() {
            *min = (*min).min(deadline);
        }
        self.wheel_len += 1;
    }

    /// Compacts the queue of `slot` at `level` if tombstones are more than
    /// half of it, which keeps a live record in every occupied slot.
    fn compact_if_sparse(&mut self, level: usize, slot: usize) {
        if level == 0 {
            let tick = &mut self.ticks[slot];
            if 2 * tick.dead as usize > tick.indices.len() {
                self.dead -= tick.dead as usize;
                tick.dead = 0;
                let (entries, free) = (&self.entries, &mut self.free);
                tick.indices.retain(|&index| {
                    let live = entries[index as usize].is_some();
                    if !live {
                        free.push(index);
                    }
                    live
                });
                self.tick_emptied(slot);
            }
            return;
        }
        let queue = self.upper[level - 1][slot];
        if 2 * queue.dead <= queue.len {
            return;
        }
        let queue = self.take_queue(level, slot);
        self.dead -= queue.dead as usize;
        self.drain_queue(queue, |wheel, record| {
            if wheel.entries[record.index as usize].is_some() {
                wheel.push_back(level, slot, record);
            } else {
                wheel.free.push(record.index);
            }
        });
    }

    /// Appends a record to `slot` at `level`.
    fn push_record(&mut self, level: usize, slot: usize, record: Record) {
        if level == 0 {
            self.ticks[slot].indices.push_back(record.index);
            self.occupied[0] |= 1u64 << slot;
        } else {
            self.push_back(level, slot, record);
        }
    }

    /// Clears the occupancy bit of level-0 `slot` if it is empty, and gives
    /// back the memory of an exceptionally large queue.
    fn tick_emptied(&mut self, slot: usize) {
        let indices = &mut self.ticks[slot].indices;
        if indices.is_empty() {
            self.occupied[0] &= !(1u64 << slot);
            if indices.capacity() > TICK_KEEP {
                *indices = VecDeque::new();
            }
        }
    }

    /// Appends a record to the queue of `slot` at `level >= 1`.
    fn push_back(&mut self, level: usize, slot: usize, record: Record) {
        let queue = &mut self.upper[level - 1][slot];
        if queue.len == 0 {
            let block = self.pool.alloc();
            *queue = Queue {
                head: block,
                tail: block,
                ..Queue::EMPTY
            };
            self.occupied[level] |= 1u64 << slot;
        } else if (queue.len as usize).is_multiple_of(BLOCK_LEN) {
            let block = self.pool.alloc();
            self.pool.next[queue.tail as usize] = block;
            queue.tail = block;
        }
        self.pool.blocks[queue.tail as usize].0[queue.len as usize % BLOCK_LEN] = record;
        queue.len += 1;
    }

    /// Detaches the queue of `slot` at `level`, leaving the slot empty.
    fn take_queue(&mut self, level: usize, slot: usize) -> Queue {
        self.occupied[level] &= !(1u64 << slot);
        std::mem::replace(&mut self.upper[level - 1][slot], Queue::EMPTY)
    }

    /// Hands every record of a detached queue to `f`, in order, and returns
    /// its blocks to the pool. A block is released once all its records have
    /// been handed out; `f` may push to other queues meanwhile.
    fn drain_queue(&mut self, queue: Queue, mut f: impl FnMut(&mut Self, Record)) {
        let mut block = queue.head;
        while block != NIL {
            for i in 0..queue.filled(block) {
                let record = self.pool.blocks[block as usize].0[i];
                f(self, record);
            }
            let next = self.pool.next[block as usize];
            self.pool.release(block);
            block = next;
        }
    }

    /// Calls `f` on every record of `queue`, in order.
    fn for_each_record(&self, queue: Queue, mut f: impl FnMut(Record)) {
        let mut block = queue.head;
        while block != NIL {
            for &record in &self.pool.blocks[block as usize].0[..queue.filled(block)] {
                f(record);
            }
            block = self.pool.next[block as usize];
        }
    }

    /// The pending timer for `key`, if any.
    fn lookup(&self, key: TimerKey) -> Option<&Timer<T>> {
        self.entries
            .get(key.index as usize)?
            .as_ref()
            .filter(|timer| timer.seq.get() == key.seq)
    }

    fn alloc(&mut self, timer: Timer<T>) -> u32 {
        if let Some(index) = self.free.pop() {
            let entry = &mut self.entries[index as usize];
            debug_assert!(entry.is_none(), "free index is occupied: index={index}");
            *entry = Some(timer);
            return index;
        }
        let index = u32::try_from(self.entries.len())
            .ok()
            .filter(|&index| index != u32::MAX)
            .expect("TimingWheel holds at most u32::MAX - 1 timers");
        self.entries.push(Some(timer));
        index
    }

    /// Takes the timer at `index` out of the slab and frees the entry.
    fn release(&mut self, index: u32) -> Timer<T> {
        self.free.push(index);
        self.entries[index as usize]
            .take()
            .unwrap_or_else(|| unreachable!("releasing a vacant entry: index={index}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<T> TimingWheel<T> {
        /// Walks every structure and checks the invariants the module
        /// documentation states.
        fn check_invariants(&self) {
            assert!(
                self.elapsed <= self.now,
                "elapsed={} now={}",
                self.elapsed,
                self.now
            );
            // Every slab index is in exactly one place: a queue (live or
            // tombstone), a side map, or the free set.
            let mut seen = vec![false; self.entries.len()];
            let mut mark = |index: u32| {
                assert!(!seen[index as usize], "index in two places: {index}");
                seen[index as usize] = true;
            };
            let mut blocks_in_queues = 0;
            let mut block_seen = vec![false; self.pool.blocks.len()];
            let mut mark_block = |block: u32| {
                assert!(!block_seen[block as usize], "block in two places: {block}");
                block_seen[block as usize] = true;
            };
            let (mut in_levels, mut tombstones) = (0, 0);
            for (slot, tick) in self.ticks.iter().enumerate() {
                let occupied = self.occupied[0] & (1 << slot) != 0;
                assert_eq!(occupied, !tick.indices.is_empty(), "level=0 slot={slot}");
                assert!(2 * tick.dead as usize <= tick.indices.len(), "slot={slot}");
                let deadline = slot_start(self.elapsed, 0, slot);
                let (mut dead, mut last_seq) = (0, 0);
                for &index in &tick.indices {
                    mark(index);
                    let Some(timer) = &self.entries[index as usize] else {
                        dead += 1;
                        continue;
                    };
                    assert_eq!(timer.deadline, deadline, "slot={slot}");
                    assert_eq!(level_for(self.elapsed, deadline), 0);
                    assert!(last_seq < timer.seq.get(), "equal deadlines out of order");
                    last_seq = timer.seq.get();
                }
                assert_eq!(dead, tick.dead, "slot={slot}");
                in_levels += tick.indices.len() - dead as usize;
                tombstones += dead as usize;
            }
            for level in 1..LEVELS {
                for slot in 0..SLOTS {
                    let queue = self.upper[level - 1][slot];
                    let occupied = self.occupied[level] & (1 << slot) != 0;
                    assert_eq!(occupied, queue.len > 0, "level={level} slot={slot}");
                    if queue.len == 0 {
                        assert_eq!(queue, Queue::EMPTY, "level={level} slot={slot}");
                        continue;
                    }
                    assert!(
                        2 * queue.dead <= queue.len,
                        "level={level} slot={slot} dead={} len={}",
                        queue.dead,
                        queue.len
                    );
                    let mut block = queue.head;
                    loop {
                        blocks_in_queues += 1;
                        mark_block(block);
                        if block == queue.tail {
                            assert_eq!(self.pool.next[block as usize], NIL);
                            break;
                        }
                        block = self.pool.next[block as usize];
                    }
                    let start = slot_start(self.elapsed, level, slot);
                    let (mut count, mut dead) = (0, 0);
                    let mut last: Option<(u64, u64)> = None;
                    self.for_each_record(queue, |record| {
                        count += 1;
                        mark(record.index);
                        assert!(
                            u64::from(record.offset) < 1 << (level as u32 * SLOT_BITS)
                                || level == 0
                        );
                        let Some(timer) = &self.entries[record.index as usize] else {
                            dead += 1;
                            return;
                        };
                        assert_eq!(timer.deadline, start + u64::from(record.offset));
                        assert_eq!(level_for(self.elapsed, timer.deadline), level);
                        assert_eq!(slot_for(timer.deadline, level), slot);
                        if let Some((deadline, seq)) = last
                            && deadline == timer.deadline
                        {
                            assert!(seq < timer.seq.get(), "equal deadlines out of order");
                        }
                        last = Some((timer.deadline, timer.seq.get()));
                    });
                    assert_eq!(count, queue.len, "level={level} slot={slot}");
                    assert_eq!(dead, queue.dead, "level={level} slot={slot}");
                    in_levels += (count - dead) as usize;
                    tombstones += dead as usize;
                }
            }
            assert_eq!(in_levels, self.wheel_len);
            assert_eq!(tombstones, self.dead);
            for (map, past) in [(&self.past, true), (&self.overflow, false)] {
                for (&(deadline, seq), &index) in map {
                    mark(index);
                    let timer = self.entries[index as usize].as_ref().unwrap();
                    assert_eq!((timer.deadline, timer.seq.get()), (deadline, seq));
                    if past {
                        assert!(deadline < self.elapsed);
                    } else {
                        assert_ne!((deadline ^ self.elapsed) >> EPOCH_BITS, 0);
                        assert!(deadline > self.elapsed);
                    }
                }
            }
            assert_eq!(in_levels + self.past.len() + self.overflow.len(), self.len);
            self.free.check();
            for index in self.free.indices() {
                mark(index);
                assert!(self.entries[index as usize].is_none(), "index={index}");
            }
            assert!(seen.iter().all(|&seen| seen), "slab index lost");
            let occupied_entries = self.entries.iter().filter(|entry| entry.is_some()).count();
            assert_eq!(occupied_entries, self.len);
            // Every block is in exactly one queue or free.
            self.pool.free.check();
            for block in self.pool.free.indices() {
                mark_block(block);
            }
            assert_eq!(
                blocks_in_queues + self.pool.free.len(),
                self.pool.blocks.len()
            );
            assert!(block_seen.iter().all(|&seen| seen), "block lost");
            if self.wheel_len > 0
                && let Some(&min) = self.wheel_min.get()
            {
                assert_eq!(min, self.compute_wheel_min());
            }
        }

        /// Heap bytes held by the wheel's per-timer storage (slab, free
        /// set, record pool, level-0 queues), by capacity.
        fn heap_bytes(&self) -> usize {
            self.entries.capacity() * size_of::<Option<Timer<T>>>()
                + self.free.heap_bytes()
                + self.pool.blocks.capacity() * size_of::<Block>()
                + self.pool.next.capacity() * size_of::<u32>()
                + self.pool.free.heap_bytes()
                + self
                    .ticks
                    .iter()
                    .map(|tick| tick.indices.capacity() * size_of::<u32>())
                    .sum::<usize>()
        }
    }

    impl FreeSet {
        fn heap_bytes(&self) -> usize {
            let words = self.bits.capacity()
                + self
                    .summary
                    .iter()
                    .map(|level| level.capacity())
                    .sum::<usize>();
            words * size_of::<u64>()
        }

        /// Every free index: the stack's, then the bitmaps'.
        fn indices(&self) -> Vec<u32> {
            let mut indices = self.recent[..self.recent_len].to_vec();
            for (w, &word) in self.bits.iter().enumerate() {
                for bit in 0..64 {
                    if word & (1 << bit) != 0 {
                        indices.push((w * 64 + bit) as u32);
                    }
                }
            }
            indices
        }

        /// Checks that each summary bit says whether the word below it is
        /// non-zero, and that `hint` has only zero words before it.
        fn check(&self) {
            let mut below = &self.bits;
            for level in &self.summary {
                assert_eq!(level.len(), below.len().div_ceil(64));
                for (j, &word) in below.iter().enumerate() {
                    assert_eq!(level[j / 64] & (1 << (j % 64)) != 0, word != 0, "j={j}");
                }
                below = level;
            }
            assert!(below.len() <= 1, "top level wider than a word");
            assert!(self.bits.iter().take(self.hint).all(|&word| word == 0));
            assert_eq!(self.indices().len(), self.len());
            assert_eq!(
                self.bits
                    .iter()
                    .map(|word| word.count_ones() as usize)
                    .sum::<usize>(),
                self.len
            );
        }
    }

    /// Drains everything due at `now` as `(deadline, value)`.
    fn drain<T>(wheel: &mut TimingWheel<T>, now: u64) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        while let Some((_, deadline, value)) = wheel.poll(now) {
            out.push((deadline, value));
            wheel.check_invariants();
        }
        wheel.check_invariants();
        out
    }

    const SPAN: u64 = 1 << EPOCH_BITS;

    // The storage budget: at most 64 bytes per `u64` timer.
    const _: () = assert!(TimingWheel::<u64>::ENTRY_BYTES <= 64);

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn entry_and_key_sizes() {
        assert_eq!(TimingWheel::<u64>::ENTRY_BYTES, 32);
        assert_eq!(size_of::<Option<Timer<u64>>>(), 24);
        assert_eq!(size_of::<Block>(), 512);
        assert_eq!(size_of::<TimerKey>(), 16);
    }

    #[test]
    fn level_and_slot_edges() {
        // (elapsed, deadline, level, slot)
        let cases = [
            (0, 0, 0, 0),
            (0, 1, 0, 1),
            (0, 63, 0, 63),
            (0, 64, 1, 1),
            (0, 4095, 1, 63),
            (0, 4096, 2, 1),
            (0, 64u64.pow(3) - 1, 2, 63),
            (0, 64u64.pow(3), 3, 1),
            (0, 64u64.pow(4), 4, 1),
            (0, 64u64.pow(5), 5, 1),
            (0, SPAN - 1, 5, 63),
            (63, 64, 1, 1),
            (64, 127, 0, 63),
            (100, 100, 0, 36),
            (4095, 4096, 2, 1),
            (4096, 4096 + 63, 0, 63),
        ];
        for (elapsed, deadline, level, slot) in cases {
            assert_eq!(
                (level_for(elapsed, deadline), slot_for(deadline, level)),
                (level, slot),
                "elapsed={elapsed} deadline={deadline}"
            );
        }
    }

    #[test]
    fn single_timer_expires_exactly_at_its_deadline() {
        let starts = [
            0,
            1,
            63,
            64,
            100,
            4095,
            4096,
            SPAN - 10,
            SPAN,
            3 * SPAN + 7,
            u64::MAX - SPAN,
        ];
        let offsets = [
            0,
            1,
            63,
            64,
            65,
            4095,
            4096,
            4097,
            64u64.pow(3) - 1,
            64u64.pow(3),
            64u64.pow(4) - 1,
            64u64.pow(4),
            64u64.pow(5) - 1,
            64u64.pow(5),
            SPAN - 1,
            SPAN,
            SPAN + 1,
            1 << 40,
        ];
        for start in starts {
            for offset in offsets {
                let Some(deadline) = start.checked_add(offset) else {
                    continue;
                };
                let mut wheel = TimingWheel::with_now(start);
                let key = wheel.insert(deadline, offset);
                wheel.check_invariants();
                assert_eq!(
                    wheel.next_deadline(),
                    Some(deadline),
                    "start={start} offset={offset}"
                );
                assert_eq!(wheel.deadline(key), Some(deadline));
                if deadline > start {
                    assert!(
                        wheel.poll(deadline - 1).is_none(),
                        "start={start} offset={offset}"
                    );
                    wheel.check_invariants();
                    assert_eq!(
                        wheel.next_deadline(),
                        Some(deadline),
                        "start={start} offset={offset}"
                    );
                }
                assert_eq!(
                    wheel.poll(deadline),
                    Some((key, deadline, offset)),
                    "start={start} offset={offset}"
                );
                assert!(wheel.is_empty());
                assert_eq!(wheel.next_deadline(), None);
                assert_eq!(wheel.deadline(key), None);
                wheel.check_invariants();
            }
        }
    }

    #[test]
    fn stepping_one_tick_at_a_time_expires_each_timer_on_time() {
        let mut wheel = TimingWheel::new();
        let deadlines = [
            0, 1, 63, 64, 65, 127, 128, 4095, 4096, 4097, 8191, 8192, 262_143, 262_144,
        ];
        for (value, &deadline) in deadlines.iter().enumerate() {
            wheel.insert(deadline, value);
        }
        for now in 0..=262_144 {
            let due = drain(&mut wheel, now);
            let expected: Vec<_> = deadlines
                .iter()
                .enumerate()
                .filter(|&(_, &deadline)| deadline == now)
                .map(|(value, &deadline)| (deadline, value))
                .collect();
            assert_eq!(due, expected, "now={now}");
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn equal_deadlines_keep_insertion_order_across_cascades() {
        let mut wheel = TimingWheel::new();
        // Reaches the 5000-tick slot through two cascades.
        wheel.insert(5_000, "a");
        assert!(wheel.poll(4_096).is_none());
        // Placed at level 1 directly, behind "a" after its first cascade.
        wheel.insert(5_000, "b");
        assert!(wheel.poll(4_999).is_none());
        wheel.insert(5_000, "c");
        wheel.insert(4_999, "d");
        wheel.check_invariants();
        assert_eq!(
            drain(&mut wheel, 10_000),
            [(4_999, "d"), (5_000, "a"), (5_000, "b"), (5_000, "c")]
        );
    }

    #[test]
    fn past_deadlines_are_due_in_deadline_order() {
        let mut wheel = TimingWheel::with_now(1_000);
        wheel.insert(1_000, "now");
        wheel.insert(10, "ten");
        wheel.insert(5, "five");
        wheel.insert(7, "seven");
        wheel.insert(5, "five again");
        wheel.check_invariants();
        assert_eq!(wheel.next_deadline(), Some(5));
        assert_eq!(
            drain(&mut wheel, 0),
            [
                (5, "five"),
                (5, "five again"),
                (7, "seven"),
                (10, "ten"),
                (1_000, "now")
            ]
        );
    }

    #[test]
    fn insert_between_polls_of_a_due_batch_keeps_order() {
        let mut wheel = TimingWheel::new();
        for value in 0..3 {
            wheel.insert(100, value);
        }
        wheel.insert(200, 9);
        // The wheel stops at tick 100 after the first expiry.
        assert_eq!(wheel.poll(300).map(|(_, d, v)| (d, v)), Some((100, 0)));
        wheel.insert(50, 10); // before the wheel's position: past-due
        wheel.insert(100, 11); // same tick as the pending batch: behind it
        wheel.insert(150, 12); // between the batch and the next timer
        wheel.check_invariants();
        assert_eq!(wheel.next_deadline(), Some(50));
        assert_eq!(
            drain(&mut wheel, 0),
            [(50, 10), (100, 1), (100, 2), (100, 11), (150, 12), (200, 9)]
        );
        assert_eq!(wheel.now(), 300);
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut wheel = TimingWheel::new();
        assert!(wheel.poll(500).is_none());
        wheel.insert(400, ());
        assert!(
            wheel.poll(10).is_some(),
            "deadline 400 is already due at 500"
        );
        assert_eq!(wheel.now(), 500);
        wheel.insert(600, ());
        assert!(wheel.poll(100).is_none());
        assert_eq!(wheel.now(), 500);
    }

    #[test]
    fn cancel_table() {
        let mut wheel = TimingWheel::with_now(SPAN - 10_000);
        let in_level0 = wheel.insert(SPAN - 9_990, 0);
        let in_level2 = wheel.insert(SPAN - 5_000, 1);
        let overflow_near = wheel.insert(SPAN + 10, 2); // next epoch
        let overflow_far = wheel.insert(SPAN * 5, 3);
        let at_now = wheel.insert(SPAN - 10_000, 4);
        assert_eq!(wheel.poll(SPAN - 10_000).map(|(_, _, v)| v), Some(4));
        let past = wheel.insert(SPAN - 20_000, 5);
        wheel.check_invariants();
        assert_eq!(wheel.len(), 5);

        // (key, expected result of cancel)
        let cases = [
            (at_now, None), // expired
            (in_level0, Some(0)),
            (in_level0, None), // cancelled twice
            (in_level2, Some(1)),
            (overflow_near, Some(2)),
            (overflow_far, Some(3)),
            (past, Some(5)),
            (past, None),
        ];
        for (step, (key, expected)) in cases.into_iter().enumerate() {
            assert_eq!(wheel.cancel(key), expected, "step={step}");
            wheel.check_invariants();
        }
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
        assert!(wheel.poll(u64::MAX).is_none());
    }

    #[test]
    fn stale_key_does_not_cancel_a_reused_entry() {
        let mut wheel = TimingWheel::new();
        let old = wheel.insert(10, "old");
        assert_eq!(wheel.cancel(old), Some("old"));
        let new = wheel.insert(10, "new");
        assert_eq!(new.index, old.index, "the slab entry is reused");
        assert_ne!(new, old);
        assert_eq!(wheel.cancel(old), None);
        assert_eq!(wheel.deadline(old), None);
        assert_eq!(wheel.deadline(new), Some(10));
        let (expired, _, _) = wheel.poll(10).unwrap();
        assert_eq!(expired, new);
        assert_eq!(wheel.cancel(new), None);
    }

    #[test]
    fn next_deadline_after_cancelling_the_earliest_in_a_high_slot() {
        let mut wheel = TimingWheel::new();
        let keys: Vec<_> = [70_000, 70_500, 69_000, 80_000]
            .into_iter()
            .map(|deadline| wheel.insert(deadline, deadline))
            .collect();
        assert_eq!(wheel.next_deadline(), Some(69_000));
        wheel.cancel(keys[2]);
        assert_eq!(wheel.next_deadline(), Some(70_000));
        wheel.cancel(keys[0]);
        assert_eq!(wheel.next_deadline(), Some(70_500));
        wheel.insert(75_000, 1);
        assert_eq!(wheel.next_deadline(), Some(70_500));
        wheel.insert(65_000, 1);
        assert_eq!(wheel.next_deadline(), Some(65_000));
        wheel.check_invariants();
    }

    #[test]
    fn overflow_timers_enter_the_wheel_in_order() {
        let mut wheel = TimingWheel::new();
        let deadlines = [
            SPAN * 3 + 5,
            SPAN - 1,
            SPAN,
            SPAN * 3 + 5,
            1 << 40,
            SPAN + 4096,
            7,
            u64::MAX,
        ];
        for (value, &deadline) in deadlines.iter().enumerate() {
            wheel.insert(deadline, value);
        }
        wheel.check_invariants();
        let mut expected: Vec<_> = deadlines
            .iter()
            .enumerate()
            .map(|(value, &deadline)| (deadline, value))
            .collect();
        expected.sort();
        // Large jumps, each landing between two deadlines.
        let mut got = Vec::new();
        for now in [
            6,
            7,
            SPAN - 2,
            SPAN,
            SPAN * 2,
            SPAN * 3 + 5,
            1 << 41,
            u64::MAX - 1,
            u64::MAX,
        ] {
            got.extend(drain(&mut wheel, now));
            assert_eq!(
                wheel.next_deadline(),
                expected.get(got.len()).map(|&(d, _)| d),
                "now={now}"
            );
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn many_timers_in_one_jump() {
        let mut wheel = TimingWheel::with_now(12_345);
        let mut expected = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for value in 0..2_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let deadline = 12_345 + x % 5_000_000;
            wheel.insert(deadline, value);
            expected.push((deadline, value));
        }
        expected.sort();
        let mut out = Vec::new();
        assert_eq!(wheel.drain_expired(u64::MAX, &mut out), 2_000);
        let got: Vec<_> = out.into_iter().map(|(_, d, v)| (d, v)).collect();
        assert_eq!(got, expected);
        wheel.check_invariants();
    }

    #[test]
    fn cancel_then_poll_skips_tombstones() {
        // (poll before cancelling, so the tombstones are met by: the
        // level-2 -> level-1 cascade, the level-1 -> level-0 cascade, the
        // level-0 expiry)
        for before in [0, 4_100, 4_999] {
            let mut wheel = TimingWheel::new();
            assert!(wheel.poll(before).is_none());
            let keys: Vec<_> = (0..10).map(|v| wheel.insert(5_000 + v % 2, v)).collect();
            // Two of ten: below the compaction threshold, so they stay queued.
            assert_eq!(wheel.cancel(keys[1]), Some(1));
            assert_eq!(wheel.cancel(keys[4]), Some(4));
            assert_eq!(wheel.dead, 2, "before={before}");
            wheel.check_invariants();
            assert_eq!(wheel.next_deadline(), Some(5_000));
            assert_eq!(wheel.len(), 8);
            assert_eq!(
                drain(&mut wheel, 10_000),
                [
                    (5_000, 0),
                    (5_000, 2),
                    (5_000, 6),
                    (5_000, 8),
                    (5_001, 3),
                    (5_001, 5),
                    (5_001, 7),
                    (5_001, 9)
                ],
                "before={before}"
            );
            assert_eq!(wheel.dead, 0);
            assert_eq!(wheel.free.len(), 10, "every slab entry is free again");
        }
    }

    #[test]
    fn cancelling_many_keeps_next_deadline_exact() {
        let mut wheel = TimingWheel::with_now(1_000);
        let mut pending: Vec<(u64, TimerKey)> = Vec::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for value in 0..2_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // One level-2 slot and the level-1 slots after it.
            let deadline = 8_192 + x % 9_000;
            pending.push((deadline, wheel.insert(deadline, value)));
        }
        // Cancel from the earliest up: every cancel removes the minimum,
        // and tombstones pile up at the front of the earliest slot.
        pending.sort_by_key(|&(deadline, key)| (deadline, key.seq));
        let (early, late) = pending.split_at(1_500);
        for (i, &(deadline, key)) in early.iter().enumerate() {
            assert_eq!(wheel.next_deadline(), Some(deadline), "i={i}");
            assert!(wheel.cancel(key).is_some());
            assert!(wheel.dead <= wheel.wheel_len + 1, "i={i}");
            if i % 97 == 0 {
                wheel.check_invariants();
            }
        }
        assert_eq!(wheel.next_deadline(), Some(late[0].0));
        wheel.check_invariants();
        // Move time into the remaining slots, then cancel from the latest
        // down: the minimum stays put until the last one.
        assert!(wheel.poll(late[0].0 - 1).is_none());
        wheel.check_invariants();
        for &(_, key) in late[1..].iter().rev() {
            assert!(wheel.cancel(key).is_some());
            assert_eq!(wheel.next_deadline(), Some(late[0].0));
        }
        wheel.check_invariants();
        assert_eq!(wheel.cancel(late[0].1).map(|_| ()), Some(()));
        assert_eq!(wheel.next_deadline(), None);
        assert!(wheel.is_empty());
        wheel.check_invariants();
        assert_eq!(wheel.dead, 0, "an empty wheel keeps no tombstones");
    }

    #[test]
    fn tombstone_holds_its_slab_entry_until_dropped() {
        let mut wheel = TimingWheel::new();
        let a = wheel.insert(5_000, "a");
        let b = wheel.insert(5_000, "b");
        let c = wheel.insert(5_000, "c");
        assert_eq!(wheel.cancel(b), Some("b"));
        // `b`'s record is still queued, so its entry is not handed out.
        let d = wheel.insert(6_000, "d");
        assert_ne!(d.index, b.index);
        assert_eq!(wheel.cancel(b), None);
        assert_eq!(wheel.deadline(b), None);
        wheel.check_invariants();
        let expired: Vec<_> = std::iter::from_fn(|| wheel.poll(5_000)).collect();
        assert_eq!(expired, [(a, 5_000, "a"), (c, 5_000, "c")]);
        // The tombstone is gone with its slot, so its entry is free again:
        // one of the next three inserts reuses it, out of the old key's reach.
        let fresh: Vec<_> = ["e", "f", "g"]
            .into_iter()
            .map(|value| wheel.insert(7_000, value))
            .collect();
        let reused = *fresh
            .iter()
            .find(|key| key.index == b.index)
            .expect("the tombstone's entry is reused");
        assert_ne!(reused, b);
        assert_eq!(wheel.cancel(b), None);
        assert_eq!(wheel.deadline(b), None);
        assert_eq!(wheel.deadline(reused), Some(7_000));
        wheel.check_invariants();
        assert_eq!(
            drain(&mut wheel, 10_000),
            [(6_000, "d"), (7_000, "e"), (7_000, "f"), (7_000, "g")]
        );
    }

    #[test]
    fn compaction_bounds_tombstones() {
        let mut wheel = TimingWheel::new();
        let keep = wheel.insert(100_000, 0);
        for level0 in [false, true] {
            if level0 {
                // Now the same deadline is in a level-0 slot.
                assert!(wheel.poll(99_990).is_none());
            }
            for value in 1..10_000 {
                let key = wheel.insert(100_000, value);
                assert_eq!(wheel.cancel(key), Some(value));
                assert!(wheel.dead <= 1, "level0={level0} value={value}");
            }
            wheel.check_invariants();
            assert!(
                wheel.entries.len() <= 3,
                "slab grew: {}",
                wheel.entries.len()
            );
        }
        assert_eq!(drain(&mut wheel, 100_000), [(100_000, 0)]);
        assert_eq!(wheel.cancel(keep), None);
    }

    /// The benchmark's random workload (`benches/benches/wheel.rs`): one
    /// million timers at random offsets in `0..1_000_000` ticks, inserted and
    /// expired in cycles. Everything the wheel holds per timer, by capacity,
    /// after warm-up, must stay within 64 bytes per timer.
    #[test]
    fn random_workload_fits_64_bytes_per_timer() {
        const TIMERS: usize = 1_000_000;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let offsets: Vec<u64> = (0..TIMERS)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                x.wrapping_mul(0x2545_F491_4F6C_DD1D) % 1_000_000
            })
            .collect();
        let mut wheel = TimingWheel::new();
        wheel.reserve(TIMERS);
        let mut peak = 0;
        for _ in 0..3 {
            let base = wheel.now();
            for (value, &offset) in offsets.iter().enumerate() {
                wheel.insert(base + offset, value);
            }
            let mut expired = 0;
            while wheel.poll(base + 999_999).is_some() {
                expired += 1;
            }
            assert_eq!(expired, TIMERS);
            peak = peak.max(wheel.heap_bytes());
        }
        let per_timer = peak as f64 / TIMERS as f64;
        println!("random workload: {per_timer:.1} bytes per timer");
        assert!(per_timer <= 64.0, "{per_timer:.1} bytes per timer");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Clone, Debug)]
        enum Op {
            Insert(u64),
            InsertPast(u64),
            Cancel(usize),
            Poll(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => prop_oneof![0..200u64, 0..300_000u64, 0..(1u64 << 40)].prop_map(Op::Insert),
                1 => (0..5_000u64).prop_map(Op::InsertPast),
                2 => any::<usize>().prop_map(Op::Cancel),
                3 => prop_oneof![0..100u64, 0..100_000u64, 0..(1u64 << 38)].prop_map(Op::Poll),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Structural invariants hold after every operation (the
            /// integration test `wheel_model` checks the observable order).
            #[test]
            fn invariants_hold(start in prop_oneof![Just(0u64), Just(SPAN - 3_000), 0..(1u64 << 50)],
                               ops in proptest::collection::vec(op(), 1..120)) {
                let mut wheel = TimingWheel::with_now(start);
                let mut model = BTreeMap::new();
                let mut keys = Vec::new();
                for op in ops {
                    match op {
                        Op::Insert(offset) | Op::InsertPast(offset) => {
                            let deadline = if matches!(op, Op::Insert(_)) {
                                wheel.now().saturating_add(offset)
                            } else {
                                wheel.now().saturating_sub(offset)
                            };
                            let key = wheel.insert(deadline, keys.len());
                            model.insert((deadline, keys.len()), ());
                            keys.push((key, deadline));
                        }
                        Op::Cancel(pick) if !keys.is_empty() => {
                            let (key, deadline) = keys[pick % keys.len()];
                            let value = pick % keys.len();
                            let expected = model.remove(&(deadline, value)).map(|()| value);
                            prop_assert_eq!(wheel.cancel(key), expected);
                        }
                        Op::Cancel(_) => {}
                        Op::Poll(delta) => {
                            let now = wheel.now().saturating_add(delta);
                            while let Some((_, deadline, value)) = wheel.poll(now) {
                                let first = model.pop_first().map(|(k, ())| k);
                                prop_assert_eq!(Some((deadline, value)), first);
                            }
                            prop_assert!(model.first_key_value().is_none_or(|(&(d, _), ())| d > now));
                        }
                    }
                    wheel.check_invariants();
                    prop_assert_eq!(wheel.next_deadline(), model.first_key_value().map(|(&(d, _), ())| d));
                    prop_assert_eq!(wheel.len(), model.len());
                }
            }
        }
    }
}
