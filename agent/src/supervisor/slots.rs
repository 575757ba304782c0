//! Task slots: at most `total` slots in use; tasks wait in arrival order, first
//! come first served (a task that needs more slots than are free holds the ones
//! behind it, so big tasks are not starved by small ones).

use crate::model::TaskKey;
use std::collections::VecDeque;

#[derive(Debug)]
pub(super) struct Slots {
    total: u32,
    used: u32,
    queue: VecDeque<(TaskKey, u32)>,
}

impl Slots {
    pub(super) fn new(total: u32) -> Self {
        Self { total, used: 0, queue: VecDeque::new() }
    }

    pub(super) fn total(&self) -> u32 {
        self.total
    }

    pub(super) fn free(&self) -> u32 {
        self.total.saturating_sub(self.used)
    }

    pub(super) fn enqueue(&mut self, key: TaskKey, slots: u32) {
        self.queue.push_back((key, slots));
    }

    /// Takes a waiting task out of the queue; false if it was not waiting.
    pub(super) fn remove_queued(&mut self, key: &TaskKey) -> bool {
        // A key is queued at most once: stop at it (the oldest are found first).
        match self.queue.iter().position(|(k, _)| k == key) {
            Some(i) => self.queue.remove(i).is_some(),
            None => false,
        }
    }

    /// Marks slots used by a task that is already running (recovery).
    pub(super) fn occupy(&mut self, slots: u32) {
        self.used += slots;
    }

    /// Whether a task holds slots or waits for them.
    pub(super) fn busy(&self) -> bool {
        self.used > 0 || self.queue.iter().any(|(_, n)| *n > 0)
    }

    /// The next task to run: one that needs no slot (a start, preparation or
    /// release task), else the head of the queue if it fits in the free slots.
    pub(super) fn next_ready(&mut self) -> Option<(TaskKey, u32)> {
        if let Some(i) = self.queue.iter().position(|(_, n)| *n == 0) {
            return self.queue.remove(i);
        }
        let (_, need) = self.queue.front()?;
        if *need > self.free() {
            return None;
        }
        let (key, need) = self.queue.pop_front()?;
        self.used += need;
        Some((key, need))
    }

    pub(super) fn release(&mut self, slots: u32) {
        self.used = self.used.saturating_sub(slots);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(t: &str) -> TaskKey {
        TaskKey::new("j", t).unwrap()
    }

    #[test]
    fn first_come_first_served() {
        let mut s = Slots::new(2);
        s.enqueue(k("a"), 1);
        s.enqueue(k("b"), 2);
        s.enqueue(k("c"), 1);
        assert_eq!(s.next_ready(), Some((k("a"), 1)));
        // b needs 2 and only 1 is free: c must wait behind b.
        assert_eq!(s.next_ready(), None);
        s.release(1);
        assert_eq!(s.next_ready(), Some((k("b"), 2)));
        assert_eq!(s.free(), 0);
        s.release(2);
        assert_eq!(s.next_ready(), Some((k("c"), 1)));
        assert_eq!(s.next_ready(), None);
    }

    #[test]
    fn slotless_tasks_do_not_wait() {
        let mut s = Slots::new(1);
        s.enqueue(k("a"), 1);
        assert_eq!(s.next_ready(), Some((k("a"), 1)));
        s.enqueue(k("b"), 1);
        s.enqueue(k("jobpreparation"), 0);
        assert!(s.busy());
        // The full node does not hold back a task that needs no slot.
        assert_eq!(s.next_ready(), Some((k("jobpreparation"), 0)));
        assert_eq!(s.next_ready(), None);
        s.release(1);
        assert_eq!(s.next_ready(), Some((k("b"), 1)));
        s.release(1);
        assert!(!s.busy());
        s.enqueue(k("jobrelease"), 0);
        assert!(!s.busy());
    }

    #[test]
    fn remove_and_occupy() {
        let mut s = Slots::new(1);
        s.occupy(1);
        s.enqueue(k("a"), 1);
        assert!(s.remove_queued(&k("a")));
        assert!(!s.remove_queued(&k("a")));
        s.release(1);
        assert_eq!(s.free(), 1);
        assert_eq!(s.next_ready(), None);
    }

    #[test]
    fn removing_one_keeps_the_others_in_order() {
        let mut s = Slots::new(1);
        for t in ["a", "b", "c", "d"] {
            s.enqueue(k(t), 1);
        }
        assert!(s.remove_queued(&k("c")));
        assert!(s.remove_queued(&k("a")));
        assert!(!s.remove_queued(&k("x")));
        assert_eq!(s.next_ready(), Some((k("b"), 1)));
        s.release(1);
        assert_eq!(s.next_ready(), Some((k("d"), 1)));
        s.release(1);
        assert_eq!(s.next_ready(), None);
    }
}
