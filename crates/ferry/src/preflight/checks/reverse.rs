//! What a reverse needs (`ferry reverse`, `--reversible`): a destination whose change stream
//! can carry the way back, and, for the reverse itself, the forward migration it reverses.

use mongodb::bson::Document;
use mongodb::Client;

use crate::lifecycle::{Direction, State};
use crate::plan::Clusters;
use crate::preflight::identity::identity;
use crate::preflight::report::Check;
use crate::state::Stored;

/// `--reversible`: the way back follows the destination's change stream, so the destination
/// must be a replica set member.
pub fn reversible(destination_hello: &Document, destination: &str) -> Check {
    const ID: &str = "destination.reversible";
    match destination_hello.get_str("setName") {
        Ok(set) => Check::pass(
            ID,
            format!("the destination is replica set {set}: its change stream can carry a reverse"),
        ),
        Err(_) => Check::fail(
            ID,
            format!("the destination at {destination} is not a replica set member, so nothing can follow its changes back"),
            "make the destination a replica set (a single-member one will do), or leave out --reversible",
        ),
    }
}

/// A reverse starts from a forward migration COMMITTED with `--reversible`, whose state (on
/// the reverse's source, the new cluster) records where the way back starts. The reverse must
/// name the same clusters and filters (a broader filter would relax collections the forward
/// never carried; a narrower one would leave changes behind), and the new cluster's oplog must
/// still hold the reverse point.
pub async fn reverse_ready(
    forward: Result<Option<Stored>, String>,
    clusters: &Clusters,
    old_source_hello: &Document,
    new_cluster: &Client,
) -> Check {
    const ID: &str = "reverse.ready";
    const FIX: &str = "reverse a migration that was started with --reversible and has COMMITTED, with the same --source, --destination, --state-db and filters";
    let forward = match forward {
        Ok(Some(forward)) => forward,
        Ok(None) => {
            return Check::fail(
                ID,
                format!(
                    "the new cluster holds no migration state in database {}",
                    clusters.filter.state_db
                ),
                FIX,
            )
        }
        Err(e) => {
            return Check::fail(
                ID,
                format!("could not read the forward migration's state: {e}"),
                FIX,
            )
        }
    };
    let point = match (forward.state, &forward.reverse) {
        (State::Committed, Some(point)) => point,
        (State::Committed, None) => {
            return Check::fail(
                ID,
                "the forward migration COMMITTED without --reversible, so where the new cluster's changes start is unknown",
                FIX,
            )
        }
        (state, _) => {
            return Check::fail(
                ID,
                format!("the forward migration is {}, not COMMITTED", state.as_str()),
                "commit the forward migration first (ferry commit), then reverse it",
            )
        }
    };
    // The forward identity names its source (this reverse's destination) and its filters.
    let forward_clusters = Clusters {
        source: clusters.destination.clone(),
        destination: clusters.source.clone(),
        filter: clusters.filter.clone(),
    };
    let expected = identity(
        &forward_clusters,
        old_source_hello,
        Direction::Forward,
        None,
    );
    // The set's name, not its hosts: members may have been replaced since.
    let differs = ["sourceSet", "include", "exclude"]
        .into_iter()
        .find(|field| forward.plan.get(field) != expected.get(field));
    if let Some(field) = differs {
        return Check::fail(
            ID,
            format!(
                "the forward migration ran with another {field} ({} then, {} now)",
                forward
                    .plan
                    .get(field)
                    .map_or("none".into(), ToString::to_string),
                expected
                    .get(field)
                    .map_or("none".into(), ToString::to_string)
            ),
            FIX,
        );
    }
    match crate::source::oplog::oldest_entry(new_cluster).await {
        Ok(Some(oldest)) if oldest > point.time => {
            return Check::fail(
                ID,
                format!(
                    "the new cluster's oplog no longer reaches back to the forward commit ({} s since the epoch; its oldest entry is at {} s)",
                    point.time.time, oldest.time
                ),
                "the way back by change stream is gone: migrate the new cluster into the old one with `ferry migrate --source NEW --destination OLD --drop`",
            )
        }
        _ => {}
    }
    let found = format!(
        "the forward migration COMMITTED and kept the way back: the new cluster's changes from {} s since the epoch flow back",
        point.time.time
    );
    match forward.commit.and_then(|c| c.writes_open) {
        Some(reason) => Check::warn(
            ID,
            format!("{found}; the old source's writes were left open at that commit ({reason})"),
            "make sure nothing writes to the old source: a write there during the reverse is overwritten or lost",
        ),
        None => Check::pass(ID, found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;
    use mongodb::bson::doc;

    #[test]
    fn only_a_replica_set_destination_keeps_a_way_back() {
        let member = doc! { "setName": "rs1", "isWritablePrimary": true };
        assert_eq!(reversible(&member, "mongodb://b").status, Status::Pass);
        let standalone = doc! { "isWritablePrimary": true };
        let check = reversible(&standalone, "mongodb://b");
        assert_eq!(check.status, Status::Fail);
        assert!(check.found.contains("mongodb://b"), "{}", check.found);
    }
}
