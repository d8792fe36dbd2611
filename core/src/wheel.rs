//! Hierarchical timing wheel over `u64` millisecond ticks.
//!
//! [`TimingWheel`] is pure bookkeeping with no clock inside: the caller passes
//! the current tick to [`TimingWheel::poll`] and gets back the timers that are
//! due. The design follows tokio's `runtime/time/wheel`.
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
//! # Ordering
//!
//! Timers expire in ascending deadline order, ties broken by insertion order:
//! exactly the order of a `BinaryHeap<Reverse<(deadline, seq)>>`. The O(1)
//! slot lists keep this because, in every slot list, timers with equal
//! deadlines appear in insertion order: an insert appends the newest timer,
//! a cascade from level `n` happens only while all levels below `n` are empty
//! and keeps the relative order of the list it moves, and overflow timers
//! migrate into empty levels in `(deadline, seq)` order. A level-0 slot holds a
//! single deadline, so its list is exactly the expiry order.
//!
//! # Complexity
//!
//! - `insert`: O(1); O(log m) when the timer goes to a side map (m = its size).
//! - `cancel`: O(1); O(log m) for a timer in a side map.
//! - `poll`: O(1) amortised per expired timer (finding the next occupied slot
//!   is a `trailing_zeros` per level; each timer cascades at most five times).
//! - `next_deadline`: O(1) from a cached minimum; after the earliest timer is
//!   cancelled or expired the cache is rebuilt from the occupancy bitmaps, and
//!   if the earliest slot is above level 0, by one scan of that slot.
//!
//! # Storage
//!
//! Timers live in a slab (a `Vec` of entries plus a stack of vacant indices)
//! linked into per-slot intrusive doubly-linked lists by `u32` index, with one
//! `u64` occupancy bitmap per level. An entry is
//! [`TimingWheel::ENTRY_BYTES`] bytes (40 for `T = u64` on 64-bit targets),
//! plus 4 bytes on the free stack while it is vacant. Inserting allocates only
//! when the slab grows past its previous peak or a timer goes to a side map;
//! the slab never shrinks. At most `u32::MAX - 1` timers can be pending at
//! once.
//!
//! Walking a slot's list is a chain of dependent loads, so once the slab
//! outgrows the CPU caches and list order no longer follows memory order
//! (timers inserted in random deadline order into a reused slab), each
//! cascade step costs about one cache miss per timer.

use std::collections::BTreeMap;
use std::fmt;
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
/// The "no entry" link.
const NIL: u32 = u32::MAX;

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

/// Where a pending timer is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Wheel { level: u8, slot: u8 },
    Past,
    Overflow,
}

/// A pending timer.
#[derive(Debug)]
struct Timer<T> {
    deadline: u64,
    /// Insertion sequence number: tie-breaker for equal deadlines and the
    /// generation checked by [`TimerKey`].
    seq: u64,
    prev: u32,
    next: u32,
    loc: Loc,
    value: T,
}

/// One slab entry.
#[derive(Debug)]
enum Entry<T> {
    Vacant,
    Occupied(Timer<T>),
}

/// Head and tail of one slot's list.
#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: Self = Self {
        head: NIL,
        tail: NIL,
    };
}

/// A hierarchical timing wheel: timers with `u64` tick deadlines, O(1)
/// insert and cancel, expiring in `(deadline, insertion order)` order.
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
/// - **Cost**: O(1) insert and cancel; O(1) amortised per expired timer (each
///   timer moves down a level at most five times); [`next_deadline`] is exact
///   and normally O(1).
/// - **Memory**: [`ENTRY_BYTES`] per timer in a slab that is reused and never
///   shrinks; steady-state inserts do not allocate.
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
    entries: Vec<Entry<T>>,
    /// Vacant slab indices, used last-in first-out. A stack rather than a
    /// list threaded through the vacant entries, so taking an index does not
    /// wait on a cache miss to find the next one.
    free: Vec<u32>,
    /// All pending timers.
    len: usize,
    /// Timers in the levels (not in `past` or `overflow`).
    wheel_len: usize,
    next_seq: u64,
    /// The latest tick passed to `poll` (or given at construction).
    now: u64,
    /// The tick the levels are positioned at; `elapsed <= now`.
    elapsed: u64,
    occupied: [u64; LEVELS],
    slots: [[List; SLOTS]; LEVELS],
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

impl<T> TimingWheel<T> {
    /// Bytes of slab storage per timer: `size_of` of one slab entry.
    ///
    /// Timers in the overflow or past-due maps additionally cost a B-tree
    /// entry (24 bytes plus node overhead).
    pub const ENTRY_BYTES: usize = size_of::<Entry<T>>();

    /// Creates an empty wheel at tick 0.
    pub fn new() -> Self {
        Self::with_now(0)
    }

    /// Creates an empty wheel at tick `now`.
    pub fn with_now(now: u64) -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
            wheel_len: 0,
            next_seq: 0,
            now,
            elapsed: now,
            occupied: [0; LEVELS],
            slots: [[List::EMPTY; SLOTS]; LEVELS],
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

    /// Reserves slab room for at least `additional` more timers than are
    /// pending now, so inserts up to that many do not allocate.
    pub fn reserve(&mut self, additional: usize) {
        self.entries
            .reserve(additional.saturating_sub(self.free.len()));
        // Room to free every entry without growing the free stack.
        self.free.reserve(self.entries.capacity() - self.free.len());
    }

    /// Schedules `value` to expire at tick `deadline` and returns its key.
    ///
    /// A deadline at or before [`now`](Self::now) is due at the next
    /// [`poll`](Self::poll). O(1) (O(log m) for the rare timer that lands in
    /// the overflow or past-due map, see the module documentation).
    ///
    /// # Panics
    ///
    /// If `u32::MAX - 1` timers are already pending.
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let index = self.alloc(Timer {
            deadline,
            seq,
            prev: NIL,
            next: NIL,
            loc: Loc::Past,
            value,
        });
        self.len += 1;
        if deadline < self.elapsed {
            self.past.insert((deadline, seq), index);
        } else if (deadline ^ self.elapsed) >> EPOCH_BITS != 0 {
            self.timer_mut(index).loc = Loc::Overflow;
            self.overflow.insert((deadline, seq), index);
        } else {
            self.wheel_add(index, deadline);
        }
        TimerKey { index, seq }
    }

    /// Cancels the timer for `key` and returns its value, or `None` if it
    /// already expired, was cancelled, or `key` is stale.
    ///
    /// O(1) (O(log m) for a timer in the overflow or past-due map).
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let timer = self.lookup(key)?;
        let (deadline, seq, loc) = (timer.deadline, timer.seq, timer.loc);
        match loc {
            Loc::Wheel { level, slot } => {
                self.unlink(key.index, usize::from(level), usize::from(slot));
                self.wheel_len -= 1;
                if self.wheel_len == 0 || self.wheel_min.get() == Some(&deadline) {
                    self.wheel_min.take();
                }
            }
            Loc::Past => {
                let removed = self.past.remove(&(deadline, seq));
                debug_assert_eq!(
                    removed,
                    Some(key.index),
                    "past map out of sync: key={key:?}"
                );
            }
            Loc::Overflow => {
                let removed = self.overflow.remove(&(deadline, seq));
                debug_assert_eq!(
                    removed,
                    Some(key.index),
                    "overflow map out of sync: key={key:?}"
                );
            }
        }
        self.len -= 1;
        Some(self.release(key.index).value)
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
    /// the cache (occupancy bitmaps, plus one scan of the earliest slot if it
    /// is above level 0).
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
                let ((deadline, seq), index) = entry.remove_entry();
                return Some(self.expire(index, deadline, seq));
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
                let index = self.slots[0][slot].head;
                let (deadline, seq) = {
                    let timer = self.timer(index);
                    (timer.deadline, timer.seq)
                };
                debug_assert_eq!(
                    deadline, start,
                    "level-0 slot holds another deadline: slot={slot}"
                );
                self.unlink(index, 0, slot);
                self.wheel_len -= 1;
                let head = self.slots[0][slot].head;
                if head == NIL {
                    self.wheel_min.take();
                } else {
                    debug_assert!(
                        self.timer(head).seq > seq,
                        "slot out of insertion order: slot={slot} seq={seq} next_seq={}",
                        self.timer(head).seq
                    );
                }
                return Some(self.expire(index, deadline, seq));
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

    /// Finishes expiring the timer at `index`, which is already unlinked.
    fn expire(&mut self, index: u32, deadline: u64, seq: u64) -> (TimerKey, u64, T) {
        debug_assert!(
            deadline <= self.now,
            "expiring a timer before its deadline: deadline={deadline} now={}",
            self.now
        );
        self.len -= 1;
        let timer = self.release(index);
        (TimerKey { index, seq }, deadline, timer.value)
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
            let level_mask = (1u64 << (shift + SLOT_BITS)) - 1;
            let start = (self.elapsed & !level_mask) + (u64::from(slot) << shift);
            return (level, slot as usize, start);
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
            return start;
        }
        let mut min = u64::MAX;
        let mut index = self.slots[level][slot].head;
        while index != NIL {
            let timer = self.timer(index);
            min = min.min(timer.deadline);
            index = timer.next;
        }
        debug_assert!(
            min >= start,
            "slot minimum before slot start: min={min} start={start}"
        );
        min
    }

    /// Moves `elapsed` to `start`, the start of slot `slot` at `level >= 1`,
    /// and redistributes that slot's timers to lower levels. All lower levels
    /// are empty, so the moved timers keep their relative order.
    fn cascade(&mut self, level: usize, slot: usize, start: u64) {
        debug_assert!(
            self.occupied[..level].iter().all(|&bits| bits == 0),
            "cascade with lower levels occupied: level={level}"
        );
        self.elapsed = start;
        let list = std::mem::replace(&mut self.slots[level][slot], List::EMPTY);
        self.occupied[level] &= !(1u64 << slot);
        let mut index = list.head;
        while index != NIL {
            let (deadline, next) = {
                let timer = self.timer(index);
                (timer.deadline, timer.next)
            };
            let to = level_for(start, deadline);
            debug_assert!(
                to < level,
                "cascade did not descend: from={level} to={to} deadline={deadline}"
            );
            self.link_back(index, to, slot_for(deadline, to));
            index = next;
        }
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

    /// Links a timer into the levels and keeps the counters and the cached
    /// minimum up to date.
    fn wheel_add(&mut self, index: u32, deadline: u64) {
        let level = level_for(self.elapsed, deadline);
        self.link_back(index, level, slot_for(deadline, level));
        if self.wheel_len == 0 {
            self.wheel_min = OnceLock::from(deadline);
        } else if let Some(min) = self.wheel_min.get_mut() {
            *min = (*min).min(deadline);
        }
        self.wheel_len += 1;
    }

    /// Appends a timer to the list of `slot` at `level`.
    fn link_back(&mut self, index: u32, level: usize, slot: usize) {
        let tail = self.slots[level][slot].tail;
        {
            let timer = self.timer_mut(index);
            timer.prev = tail;
            timer.next = NIL;
            // Both fit in a `u8`: level < 6, slot < 64.
            timer.loc = Loc::Wheel {
                level: level as u8,
                slot: slot as u8,
            };
        }
        if tail == NIL {
            self.slots[level][slot].head = index;
            self.occupied[level] |= 1u64 << slot;
        } else {
            self.timer_mut(tail).next = index;
        }
        self.slots[level][slot].tail = index;
    }

    /// Removes a timer from the list of `slot` at `level`.
    fn unlink(&mut self, index: u32, level: usize, slot: usize) {
        let (prev, next) = {
            let timer = self.timer(index);
            (timer.prev, timer.next)
        };
        let list = &mut self.slots[level][slot];
        if prev == NIL {
            list.head = next;
        }
        if next == NIL {
            list.tail = prev;
        }
        if list.head == NIL {
            self.occupied[level] &= !(1u64 << slot);
        }
        if prev != NIL {
            self.timer_mut(prev).next = next;
        }
        if next != NIL {
            self.timer_mut(next).prev = prev;
        }
    }

    /// The pending timer for `key`, if any.
    fn lookup(&self, key: TimerKey) -> Option<&Timer<T>> {
        match self.entries.get(key.index as usize)? {
            Entry::Occupied(timer) if timer.seq == key.seq => Some(timer),
            _ => None,
        }
    }

    fn timer(&self, index: u32) -> &Timer<T> {
        match &self.entries[index as usize] {
            Entry::Occupied(timer) => timer,
            Entry::Vacant => unreachable!("vacant slab entry linked: index={index}"),
        }
    }

    fn timer_mut(&mut self, index: u32) -> &mut Timer<T> {
        match &mut self.entries[index as usize] {
            Entry::Occupied(timer) => timer,
            Entry::Vacant => unreachable!("vacant slab entry linked: index={index}"),
        }
    }

    fn alloc(&mut self, timer: Timer<T>) -> u32 {
        if let Some(index) = self.free.pop() {
            let entry = &mut self.entries[index as usize];
            debug_assert!(
                matches!(entry, Entry::Vacant),
                "free index is occupied: index={index}"
            );
            *entry = Entry::Occupied(timer);
            return index;
        }
        let index = u32::try_from(self.entries.len())
            .ok()
            .filter(|&index| index != NIL)
            .expect("TimingWheel holds at most u32::MAX - 1 timers");
        self.entries.push(Entry::Occupied(timer));
        index
    }

    fn release(&mut self, index: u32) -> Timer<T> {
        self.free.push(index);
        match std::mem::replace(&mut self.entries[index as usize], Entry::Vacant) {
            Entry::Occupied(timer) => timer,
            Entry::Vacant => unreachable!("releasing a vacant entry: index={index}"),
        }
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
            let mut in_levels = 0;
            for level in 0..LEVELS {
                for slot in 0..SLOTS {
                    let list = self.slots[level][slot];
                    let occupied = self.occupied[level] & (1 << slot) != 0;
                    assert_eq!(occupied, list.head != NIL, "level={level} slot={slot}");
                    let mut prev = NIL;
                    let mut index = list.head;
                    let mut last: Option<(u64, u64)> = None;
                    while index != NIL {
                        let timer = self.timer(index);
                        assert_eq!(timer.prev, prev, "index={index}");
                        assert_eq!(
                            timer.loc,
                            Loc::Wheel {
                                level: level as u8,
                                slot: slot as u8
                            }
                        );
                        assert_eq!(level_for(self.elapsed, timer.deadline), level);
                        assert_eq!(slot_for(timer.deadline, level), slot);
                        if let Some((deadline, seq)) = last
                            && deadline == timer.deadline
                        {
                            assert!(seq < timer.seq, "equal deadlines out of order");
                        }
                        last = Some((timer.deadline, timer.seq));
                        in_levels += 1;
                        prev = index;
                        index = timer.next;
                    }
                    assert_eq!(list.tail, prev, "level={level} slot={slot}");
                }
            }
            assert_eq!(in_levels, self.wheel_len);
            for (&(deadline, seq), &index) in &self.past {
                let timer = self.timer(index);
                assert_eq!(
                    (timer.deadline, timer.seq, timer.loc),
                    (deadline, seq, Loc::Past)
                );
                assert!(deadline < self.elapsed);
            }
            for (&(deadline, seq), &index) in &self.overflow {
                let timer = self.timer(index);
                assert_eq!(
                    (timer.deadline, timer.seq, timer.loc),
                    (deadline, seq, Loc::Overflow)
                );
                assert_ne!((deadline ^ self.elapsed) >> EPOCH_BITS, 0);
                assert!(deadline > self.elapsed);
            }
            assert_eq!(in_levels + self.past.len() + self.overflow.len(), self.len);
            let occupied_entries = self
                .entries
                .iter()
                .filter(|entry| matches!(entry, Entry::Occupied(_)))
                .count();
            assert_eq!(occupied_entries, self.len);
            assert_eq!(self.free.len() + self.len, self.entries.len());
            if self.wheel_len > 0
                && let Some(&min) = self.wheel_min.get()
            {
                assert_eq!(min, self.compute_wheel_min());
            }
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

    // The storage budget: at most 64 bytes of slab per `u64` timer.
    const _: () = assert!(TimingWheel::<u64>::ENTRY_BYTES <= 64);

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn entry_and_key_sizes() {
        assert_eq!(TimingWheel::<u64>::ENTRY_BYTES, 40);
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
