//! What identifies a migration across restarts (the source replica set and the filters), and
//! whether the destination counts as empty: it holds this migration to resume, none of the
//! included namespaces, or what `--drop` will clear.

use mongodb::bson::{doc, Bson, Document, Timestamp};

use super::report::Check;
use crate::lifecycle::Direction;
use crate::plan::Clusters;
use crate::state::Stored;

/// The replica set members a `hello` names, sorted.
pub fn members(hello: &Document) -> Vec<String> {
    let mut hosts: Vec<String> = hello
        .get_array("hosts")
        .map(|h| {
            h.iter()
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(me) = hello.get_str("me") {
        hosts.push(me.to_string());
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// What identifies a migration across restarts: the source replica set, the filters and, for
/// a reverse, the direction and the reverse point it starts from (so a reverse never resumes a
/// forward migration's state, nor an earlier round trip's reverse).
pub fn identity(
    clusters: &Clusters,
    source_hello: &Document,
    direction: Direction,
    reverse_from: Option<Timestamp>,
) -> Document {
    let patterns =
        |ps: &[crate::filter::NsPattern]| ps.iter().map(ToString::to_string).collect::<Vec<_>>();
    let mut identity = doc! {
        "source": &clusters.source.redacted,
        "destination": &clusters.destination.redacted,
        "include": patterns(&clusters.filter.include),
        "exclude": patterns(&clusters.filter.exclude),
        "sourceSet": source_hello.get_str("setName").unwrap_or_default(),
        "sourceHosts": members(source_hello),
    };
    if direction == Direction::Reverse {
        identity.insert("direction", direction.as_str());
        identity.insert("reverseFrom", reverse_from.map(Bson::Timestamp));
    }
    identity
}

/// The fields of the stored plan that must match for a resume, with how to name them.
const IDENTITY_FIELDS: [(&str, &str); 6] = [
    ("direction", "direction (ferry reverse)"),
    (
        "reverseFrom",
        "forward commit to reverse (a reverse of an earlier round trip)",
    ),
    ("sourceSet", "source replica set"),
    ("sourceHosts", "source hosts"),
    ("include", "--include"),
    ("exclude", "--exclude"),
];

/// The first identity field in which a stored migration differs from this one, with its name.
pub fn other_identity(
    stored: &Stored,
    identity: &Document,
) -> Option<&'static (&'static str, &'static str)> {
    IDENTITY_FIELDS
        .iter()
        .find(|(f, _)| stored.plan.get(f) != identity.get(f))
}

/// Whether the destination counts as empty: it holds this migration to resume (same
/// identity), or none of the included namespaces (`occupied`), or `--drop` clears them. Returns
/// the stored migration when it resumes.
pub fn emptiness(
    stored: Option<Stored>,
    identity: &Document,
    occupied: &[String],
    drop: bool,
) -> (Check, Option<Stored>) {
    const ID: &str = "destination.empty";
    if let Some(stored) = stored {
        if let Some((field, name)) = other_identity(&stored, identity) {
            return (
                Check::fail(
                    ID,
                    format!(
                        "the destination holds a migration started with another {name} ({} then, {} now)",
                        show(stored.plan.get(*field)),
                        show(identity.get(*field))
                    ),
                    if identity.get_str("direction") == Ok("reverse") {
                        "run `ferry reset --destination OLD --yes` (for a reverse it drops only Ferry's state, never the data), then reverse again"
                    } else {
                        "run the original command to resume it, or give --drop (or run `ferry reset`) to start over"
                    },
                ),
                None,
            );
        }
        let found = format!(
            "the destination holds this migration ({}, {}): it will resume",
            stored.state.as_str(),
            stored.phase.as_str()
        );
        return (Check::pass(ID, found), Some(stored));
    }
    let shown = |names: &[String]| {
        let mut text = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if names.len() > 5 {
            text.push_str(", ...");
        }
        text
    };
    let check = match (occupied.is_empty(), drop) {
        (true, _) => Check::pass(ID, "the destination holds none of the included namespaces"),
        (false, true) => Check::warn(
            ID,
            format!(
                "--drop will drop {} namespace(s) on the destination: {}",
                occupied.len(),
                shown(occupied)
            ),
            "make sure this is the cluster you mean to overwrite",
        ),
        (false, false) => Check::fail(
            ID,
            format!(
                "the destination already holds {} included namespace(s) ({})",
                occupied.len(),
                shown(occupied)
            ),
            "give --drop to replace them, or narrow the migration with --include/--exclude",
        ),
    };
    (check, None)
}

fn show(value: Option<&Bson>) -> String {
    match value {
        Some(Bson::String(s)) => s.clone(),
        Some(Bson::Array(items)) if items.is_empty() => "none".into(),
        Some(Bson::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
        None => "none".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Phase, State};
    use crate::preflight::Status;

    #[test]
    fn the_destination_is_empty_resumable_droppable_or_occupied() {
        let identity = doc! { "sourceSet": "rs0", "include": ["shop"] };
        let stored = |plan: Document| Stored {
            state: State::Running,
            phase: Phase::CollectionCopy,
            plan,
            start_time: mongodb::bson::Timestamp {
                time: 1,
                increment: 0,
            },
            checkpoint: None,
            commit: None,
            reverse: None,
        };
        let (check, resume) = emptiness(Some(stored(identity.clone())), &identity, &[], false);
        assert_eq!(
            (check.status, resume.is_some()),
            (Status::Pass, true),
            "{check:?}"
        );
        let other = doc! { "sourceSet": "rs0", "include": ["crm"] };
        let (check, resume) = emptiness(Some(stored(other)), &identity, &[], false);
        assert_eq!(
            (check.status, resume.is_none()),
            (Status::Fail, true),
            "{check:?}"
        );
        assert!(check
            .found
            .contains("another --include (crm then, shop now)"));
        let occupied = ["shop.orders".to_string()];
        assert_eq!(
            emptiness(None, &identity, &[], false).0.status,
            Status::Pass
        );
        assert_eq!(
            emptiness(None, &identity, &occupied, true).0.status,
            Status::Warn
        );
        assert_eq!(
            emptiness(None, &identity, &occupied, false).0.status,
            Status::Fail
        );
    }
}
