//! Which incarnation of each namespace the destination holds.
//!
//! A namespace can be dropped, recreated or renamed between T0 and the moment the copy reads
//! it, so the copy may hold a *later* incarnation than the events being replayed. Each source
//! collection has a UUID that every event carries; replaying an event of another incarnation on
//! top of the copied one would mix two collections. So each destination namespace remembers the
//! source UUID whose data it holds, and an event applies only to the incarnation it came from.

use std::collections::HashMap;

/// Source collection UUID bytes.
pub type Uuid = Vec<u8>;

/// Destination namespace → the source collection UUID whose data it holds.
#[derive(Clone, Debug, Default)]
pub struct Incarnations {
    held: HashMap<String, Uuid>,
    /// How many times what is held changed: a checkpoint records the whole map only when it
    /// changed since the last one (at 20,000 collections it is a megabyte).
    changes: u64,
}

impl Incarnations {
    /// The destination now holds `uuid` at `ns` (after a copy, a create or a rename).
    pub fn hold(&mut self, ns: &str, uuid: Uuid) {
        if self.held.get(ns) != Some(&uuid) {
            self.held.insert(ns.to_string(), uuid);
            self.changes += 1;
        }
    }

    /// The destination no longer holds anything at `ns`.
    pub fn release(&mut self, ns: &str) {
        if self.held.remove(ns).is_some() {
            self.changes += 1;
        }
    }

    /// How many times what is held changed: equal counts of one map mean it is unchanged.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    pub fn held(&self, ns: &str) -> Option<&Uuid> {
        self.held.get(ns)
    }

    /// Whether an event of collection `uuid` applies to what the destination holds at `ns`.
    /// Events without a UUID (views) apply by name.
    pub fn applies(&self, ns: &str, uuid: Option<&Uuid>) -> bool {
        match uuid {
            None => true,
            Some(uuid) => self.held.get(ns) == Some(uuid),
        }
    }

    /// Whether a `create` of `uuid` at `ns` must be replayed: only when nothing is held there.
    /// When something is held, the copy already saw this incarnation or a later one.
    pub fn needs_create(&self, ns: &str) -> bool {
        !self.held.contains_key(ns)
    }

    /// All held namespaces and UUIDs (for the checkpoint).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Uuid)> {
        self.held.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_apply_only_to_the_incarnation_they_came_from() {
        let mut held = Incarnations::default();
        held.hold("db.a", vec![2]);
        assert!(held.applies("db.a", Some(&vec![2])));
        assert!(
            !held.applies("db.a", Some(&vec![1])),
            "an older incarnation"
        );
        assert!(
            !held.applies("db.b", Some(&vec![2])),
            "a namespace the copy never saw"
        );
        assert!(held.applies("db.view", None), "views have no UUID");
        assert!(!held.needs_create("db.a"));
        held.release("db.a");
        assert!(held.needs_create("db.a"));
        assert!(!held.applies("db.a", Some(&vec![2])));
    }

    #[test]
    fn only_what_changes_the_map_counts_as_a_change() {
        let mut held = Incarnations::default();
        held.hold("db.a", vec![1]);
        let once = held.changes();
        held.hold("db.a", vec![1]);
        held.release("db.b");
        assert_eq!(held.changes(), once, "nothing changed");
        held.hold("db.a", vec![2]);
        assert!(held.changes() > once, "a new incarnation");
        let twice = held.changes();
        held.release("db.a");
        assert!(held.changes() > twice, "a release");
    }
}
