//! The idle stack: idle connections oldest first, where taking one from the middle is cheap.
//!
//! A checkout takes this worker's own connection from within the top
//! [`HOME_WINDOW`](super::reuse::HOME_WINDOW), not always the top, and the entries above it
//! move down one place. Held in a plain `Vec`, an entry (240 bytes with an upstream
//! connection) is what moved, by `memmove`, in and out of the stack and within it. Here
//! entries stay put in a [`Slab`], which reuses its places without allocating, and the order
//! is a `Vec` of their keys: what moves is a key per place. At 128 client connections a
//! request costs 7 % fewer instructions (4 % in the profile-guided build); at 16, where the
//! own connection is nearly always the top one, the same (`benches/load/RESULTS.md`).

use slab::Slab;

/// Below this many places the stack keeps what it has (see [`IdleStack::compact`]).
const COMPACT_FLOOR: usize = 256;

pub(super) struct IdleStack<T> {
    entries: Slab<T>,
    /// Keys into `entries`, oldest first.
    order: Vec<usize>,
}

impl<T> Default for IdleStack<T> {
    fn default() -> Self {
        Self {
            entries: Slab::new(),
            order: Vec::new(),
        }
    }
}

impl<T> IdleStack<T> {
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Put `entry` on top (the most recently used).
    pub(super) fn push(&mut self, entry: T) {
        self.order.push(self.entries.insert(entry));
    }

    /// Take the top one.
    pub(super) fn pop(&mut self) -> Option<T> {
        self.order.pop().map(|key| self.entries.remove(key))
    }

    /// Take the `i`-th oldest; the ones above it move down a place.
    ///
    /// # Panics
    /// If `i >= len()`, like `Vec::remove`.
    pub(super) fn remove(&mut self, i: usize) -> T {
        let key = self.order.remove(i);
        self.entries.remove(key)
    }

    /// Oldest first.
    pub(super) fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator<Item = &T> + '_ {
        self.order.iter().map(|&key| &self.entries[key])
    }

    /// Every entry, in no particular order.
    pub(super) fn iter_mut_unordered(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.entries.iter_mut().map(|(_, entry)| entry)
    }

    /// Take the `n` oldest (all of them if there are fewer), oldest first.
    pub(super) fn take_oldest(&mut self, n: usize) -> Vec<T> {
        let n = n.min(self.order.len());
        let entries = &mut self.entries;
        self.order
            .drain(..n)
            .map(|key| entries.remove(key))
            .collect()
    }

    /// Take the entries `pick` gives a value for, oldest first, each with that value; the rest
    /// keep their order. One pass over the stack, however many it takes: taking them one by
    /// one with [`IdleStack::remove`] moves every key above each, which for a burst's worth
    /// of connections expiring together was quadratic, under the pool's lock.
    pub(super) fn take_where<R>(
        &mut self,
        mut pick: impl FnMut(&mut T) -> Option<R>,
    ) -> Vec<(T, R)> {
        let entries = &mut self.entries;
        let mut taken = Vec::new();
        self.order.retain(|&key| match pick(&mut entries[key]) {
            Some(r) => {
                taken.push((entries.remove(key), r));
                false
            }
            None => true,
        });
        taken
    }

    /// Take every entry, oldest first, and give back the places they held.
    pub(super) fn take_all(&mut self) -> Vec<T> {
        let taken = self.take_oldest(self.order.len());
        *self = Self::default();
        taken
    }

    /// Once most places are empty (a burst has been trimmed), move the entries into a stack of
    /// their own size, in the same order, and give back the rest: a pool that once held 10 000
    /// idle connections does not keep room for them.
    pub(super) fn compact(&mut self) {
        let len = self.order.len();
        if self.entries.capacity() <= COMPACT_FLOOR.max(4 * len) {
            return;
        }
        let old = std::mem::replace(
            self,
            Self {
                entries: Slab::with_capacity(len),
                order: Vec::with_capacity(len),
            },
        );
        let IdleStack { mut entries, order } = old;
        for key in order {
            self.push(entries.remove(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(items: &[u32]) -> IdleStack<u32> {
        let mut s = IdleStack::default();
        for &i in items {
            s.push(i);
        }
        s
    }

    fn contents(s: &IdleStack<u32>) -> Vec<u32> {
        s.iter().copied().collect()
    }

    #[test]
    fn keeps_the_order_entries_came_in_whatever_places_they_reuse() {
        let mut s = stack(&[1, 2, 3, 4, 5]);
        assert_eq!(s.remove(1), 2);
        assert_eq!(s.pop(), Some(5));
        // 6 and 7 reuse the places 2 and 5 held, but sit on top.
        s.push(6);
        s.push(7);
        assert_eq!(contents(&s), [1, 3, 4, 6, 7]);
        assert_eq!(s.iter().rev().copied().collect::<Vec<_>>(), [7, 6, 4, 3, 1]);
        assert_eq!(s.iter().len(), 5);
        assert_eq!(s.remove(0), 1);
        assert_eq!(s.remove(s.len() - 1), 7);
        assert_eq!(contents(&s), [3, 4, 6]);
    }

    #[test]
    fn takes_the_oldest_and_everything() {
        let mut s = stack(&[1, 2, 3, 4]);
        assert_eq!(s.take_oldest(0), Vec::<u32>::new());
        assert_eq!(s.take_oldest(3), [1, 2, 3]);
        assert_eq!(contents(&s), [4]);
        assert_eq!(s.take_oldest(9), [4]);
        assert!(s.is_empty());
        assert_eq!(s.pop(), None);
        let mut s = stack(&[1, 2, 3]);
        assert_eq!(s.take_all(), [1, 2, 3]);
        assert!(s.is_empty());
        assert_eq!(s.entries.capacity(), 0);
        s.push(9);
        assert_eq!(contents(&s), [9]);
    }

    #[test]
    fn takes_what_is_picked_and_keeps_the_order_of_the_rest() {
        let mut s = stack(&(1..=10).collect::<Vec<_>>());
        let mut seen = Vec::new();
        let taken = s.take_where(|e| {
            seen.push(*e);
            *e += 100;
            (*e % 3 == 0).then_some(*e / 3)
        });
        assert_eq!(
            seen,
            (1..=10).collect::<Vec<_>>(),
            "each once, oldest first"
        );
        assert_eq!(taken, [(102, 34), (105, 35), (108, 36)]);
        assert_eq!(contents(&s), [101, 103, 104, 106, 107, 109, 110]);
        // The places given back are reused, and new entries still go on top.
        s.push(1);
        assert_eq!(s.pop(), Some(1));
        assert_eq!(s.remove(0), 101);
        let all = s.take_where(|_| Some(()));
        assert_eq!(all.len(), 6);
        assert!(s.is_empty());
        assert!(s.take_where(|_| Some(())).is_empty());
    }

    #[test]
    fn gives_back_room_once_a_burst_is_gone() {
        let mut s = stack(&(0..1000).collect::<Vec<_>>());
        s.compact();
        assert!(s.entries.capacity() >= 1000, "full: nothing to give back");
        assert_eq!(s.take_oldest(700).len(), 700);
        s.compact();
        assert!(s.entries.capacity() >= 1000, "a third left: kept");
        s.remove(5);
        assert_eq!(s.take_oldest(100).len(), 100);
        s.pop();
        s.compact();
        assert!(s.entries.capacity() < 1000, "{}", s.entries.capacity());
        assert!(s.order.capacity() < 1000, "{}", s.order.capacity());
        let expected: Vec<u32> = (700..705).chain(706..999).skip(100).collect();
        assert_eq!(contents(&s), expected);
        s.push(5000);
        assert_eq!(s.pop(), Some(5000));
    }

    #[test]
    fn reaches_every_entry_in_place() {
        let mut s = stack(&[1, 2, 3]);
        s.remove(1);
        for e in s.iter_mut_unordered() {
            *e += 1;
        }
        assert_eq!(contents(&s), [2, 4]);
    }
}
