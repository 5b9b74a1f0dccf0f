//! What goes wrong now, by what it concerns: set when something fails, cleared when the same
//! thing works again. The most recent one still standing is the node's `lastError`.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub(super) struct Problems {
    seq: u64,
    active: BTreeMap<String, (u64, String)>,
}

impl Problems {
    /// `what` (e.g. `discovery`, `pool intel.com/net`) is failing with `message`; a repeat of
    /// the same message keeps its place.
    pub(super) fn set(&mut self, what: impl Into<String>, message: String) {
        let what = what.into();
        if self.active.get(&what).is_some_and(|(_, m)| *m == message) {
            return;
        }
        self.seq += 1;
        self.active.insert(what, (self.seq, message));
    }

    /// `what` works again.
    pub(super) fn clear(&mut self, what: &str) {
        self.active.remove(what);
    }

    /// The latest problem still standing.
    pub(super) fn last(&self) -> Option<String> {
        self.active
            .values()
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, m)| m.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_standing_problem_is_the_last_error() {
        let mut p = Problems::default();
        assert_eq!(p.last(), None);
        p.set("discovery", "discovery panicked".into());
        p.set("config", "config refused".into());
        assert_eq!(p.last().as_deref(), Some("config refused"));
        p.set("discovery", "discovery panicked".into());
        assert_eq!(
            p.last().as_deref(),
            Some("config refused"),
            "a repeat keeps its place"
        );
        p.clear("config");
        assert_eq!(p.last().as_deref(), Some("discovery panicked"));
        p.clear("discovery");
        assert_eq!(p.last(), None);
    }
}
