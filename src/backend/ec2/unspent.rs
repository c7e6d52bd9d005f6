//! Reservations this process wrote to status that no create has spent yet.
//!
//! moto, and any endpoint that does not honour a `ClientToken`, would make a
//! second volume or instance for a create repeated after a lost answer, so
//! before each create tend searches by tag for what an earlier attempt made.
//! Where this process itself wrote the reservation the create follows, and has
//! sent nothing since, there was no earlier attempt: the search is skipped.
//! A reservation another process wrote (before a restart), or one whose create
//! was already sent once, is always searched.

use std::collections::HashMap;
use std::sync::Mutex;

/// What a reservation in status stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reserved {
    /// The data volume is about to be created (the Workspace just left Pending).
    Volume,
    /// Launch number `n` is about to be attempted.
    Launch(u32),
}

/// At most one per Workspace being created, keyed by uid.
#[derive(Debug, Default)]
pub(super) struct Unspent(Mutex<HashMap<String, Reserved>>);

impl Unspent {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reserved>> {
        self.0.lock().expect("unspent reservations lock")
    }

    /// Notes a reservation about to be written to status for `uid`.
    pub(super) fn reserve(&self, uid: &str, what: Reserved) {
        self.lock().insert(uid.to_owned(), what);
    }

    /// Whether `what` is this process's own reservation, with nothing sent
    /// for it yet.
    pub(super) fn holds(&self, uid: &str, what: Reserved) -> bool {
        self.lock().get(uid) == Some(&what)
    }

    /// Called right before the create is sent: from now on an earlier
    /// attempt may exist, whatever its answer.
    pub(super) fn spend(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_counts_once_and_only_for_what_it_reserved() {
        let unspent = Unspent::default();
        assert!(!unspent.holds("u", Reserved::Volume));
        unspent.reserve("u", Reserved::Volume);
        assert!(unspent.holds("u", Reserved::Volume));
        assert!(!unspent.holds("u", Reserved::Launch(1)));
        assert!(!unspent.holds("other", Reserved::Volume));
        unspent.spend("u");
        assert!(!unspent.holds("u", Reserved::Volume));
        unspent.reserve("u", Reserved::Launch(1));
        unspent.reserve("u", Reserved::Launch(2));
        assert!(!unspent.holds("u", Reserved::Launch(1)));
        assert!(unspent.holds("u", Reserved::Launch(2)));
        unspent.spend("u");
        assert!(!unspent.holds("u", Reserved::Launch(2)));
    }
}
