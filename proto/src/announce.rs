//! When this node announces itself (topology announcements): every [`EVERY`], and soon after
//! a local change, letting a burst of changes settle ([`SETTLE`]) and keeping at least
//! [`MIN_GAP`] between two announcements. A sans-IO timer: the driver sends an announcement
//! when [`Announcer::poll`] says so and sleeps until [`Announcer::poll_timeout`].

use std::time::{Duration, Instant};

/// Announcements are refreshed this often.
pub const EVERY: Duration = Duration::from_secs(15);
/// How long an announcement stays fresh: three periods, so two may be lost.
pub const TTL_SECS: u32 = 45;
/// A change waits this long for others to join it.
pub const SETTLE: Duration = Duration::from_millis(300);

const _: () = assert!(TTL_SECS as u64 == 3 * EVERY.as_secs());
const _: () =
    assert!(MIN_GAP.as_millis() < EVERY.as_millis() && SETTLE.as_millis() < MIN_GAP.as_millis());
/// Never two announcements closer than this.
pub const MIN_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Announcer {
    /// When the last announcement went out.
    last: Option<Instant>,
    /// The next announcement is due.
    due: Option<Instant>,
}

impl Announcer {
    /// The first announcement is due at `now`.
    pub fn new(now: Instant) -> Self {
        Announcer {
            last: None,
            due: Some(now),
        }
    }

    /// Something this node announces changed (a link, its state).
    pub fn changed(&mut self, now: Instant) {
        let at = match self.last {
            Some(last) => (last + MIN_GAP).max(now + SETTLE),
            None => now,
        };
        // A change never postpones an announcement already due sooner.
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }

    /// Announce now? (Then the next one is due `EVERY` later unless a change comes first.)
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.poll_timeout().is_some_and(|t| now >= t) {
            self.last = Some(now);
            self.due = None;
            true
        } else {
            false
        }
    }

    /// When [`Announcer::poll`] will next say yes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.last, self.due) {
            (Some(last), Some(due)) => Some(due.min(last + EVERY)),
            (Some(last), None) => Some(last + EVERY),
            (None, due) => due,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announces_at_once_then_every_period() {
        let t0 = Instant::now();
        let mut a = Announcer::new(t0);
        assert!(a.poll(t0));
        assert!(!a.poll(t0 + EVERY - Duration::from_millis(1)));
        assert_eq!(a.poll_timeout(), Some(t0 + EVERY));
        assert!(a.poll(t0 + EVERY));
    }

    #[test]
    fn a_burst_of_changes_settles_into_one_announcement_after_the_minimum_gap() {
        let t0 = Instant::now();
        let mut a = Announcer::new(t0);
        assert!(a.poll(t0));
        // Changes right after an announcement wait for MIN_GAP.
        for ms in [10, 20, 30] {
            a.changed(t0 + Duration::from_millis(ms));
        }
        assert_eq!(a.poll_timeout(), Some(t0 + MIN_GAP));
        assert!(!a.poll(t0 + MIN_GAP - Duration::from_millis(1)));
        assert!(a.poll(t0 + MIN_GAP));
        // Long after, a change waits only SETTLE.
        let t1 = t0 + Duration::from_secs(5);
        a.changed(t1);
        assert_eq!(a.poll_timeout(), Some(t1 + SETTLE));
        a.changed(t1 + Duration::from_millis(100));
        assert_eq!(
            a.poll_timeout(),
            Some(t1 + SETTLE),
            "later changes do not postpone"
        );
        assert!(a.poll(t1 + SETTLE));
        assert_eq!(a.poll_timeout(), Some(t1 + SETTLE + EVERY));
    }
}
