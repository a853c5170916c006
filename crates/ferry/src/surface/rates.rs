//! Throughput over the last second (documents, bytes, change events by kind) and the estimates
//! it gives: time left for the copy, time until the lag reaches zero.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::progress::{EventCounts, Progress, Rates, Snapshot};

/// How often the rates are measured.
const INTERVAL: Duration = Duration::from_secs(1);

/// Counters at one moment.
#[derive(Clone)]
struct Sample {
    at: Instant,
    documents: u64,
    bytes: u64,
    events: EventCounts,
    lag: Option<u64>,
}

impl Sample {
    fn of(snapshot: &Snapshot) -> Self {
        Self {
            at: Instant::now(),
            documents: snapshot.copied_documents(),
            bytes: snapshot.copied_bytes(),
            events: snapshot.events.clone(),
            lag: snapshot.lag_time_seconds,
        }
    }
}

/// The rates between two samples, and the estimates for `now`.
fn rates(before: &Sample, after: &Sample, now: &Snapshot) -> Rates {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
    let (e0, e1) = (&before.events, &after.events);
    let bytes_per_second = per_second(before.bytes, after.bytes);
    let remaining = now.total_bytes().saturating_sub(now.copied_bytes());
    let copy_eta_seconds =
        (remaining > 0 && bytes_per_second > 0.0).then(|| remaining as f64 / bytes_per_second);
    let catch_up_eta_seconds = match (before.lag, after.lag) {
        (_, Some(0)) => Some(0.0),
        (Some(l0), Some(l1)) if l1 < l0 => Some(l1 as f64 * seconds / (l0 - l1) as f64),
        _ => None,
    };
    Rates {
        documents_per_second: per_second(before.documents, after.documents),
        bytes_per_second,
        events_per_second: per_second(e0.total(), e1.total()),
        inserts_per_second: per_second(e0.insert, e1.insert),
        updates_per_second: per_second(e0.update, e1.update),
        replaces_per_second: per_second(e0.replace, e1.replace),
        deletes_per_second: per_second(e0.delete, e1.delete),
        ddl_per_second: per_second(e0.ddl, e1.ddl),
        copy_eta_seconds,
        catch_up_eta_seconds,
    }
}

/// Measures the rates every second until `stop`.
pub async fn run(progress: Progress, stop: CancellationToken) {
    let mut before = Sample::of(&progress.snapshot());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
        let snapshot = progress.snapshot();
        let after = Sample::of(&snapshot);
        let measured = rates(&before, &after, &snapshot);
        progress.update(|s| s.rates = measured);
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::CollectionProgress;

    #[test]
    fn rates_and_estimates_follow_the_counters() {
        let progress = Progress::default();
        progress.update(|s| {
            s.collections.set(CollectionProgress {
                namespace: "a.b".into(),
                estimated_total_bytes: 1000,
                copied_bytes: 400,
                copied_documents: 4,
                ..Default::default()
            });
            s.lag_time_seconds = Some(10);
        });
        let before = Sample::of(&progress.snapshot());
        progress.update(|s| {
            let c = s.collections.get_mut("a.b").expect("the row");
            c.copied_bytes = 600;
            c.copied_documents = 6;
            s.events.update = 50;
            s.lag_time_seconds = Some(8);
        });
        let mut after = Sample::of(&progress.snapshot());
        after.at = before.at + Duration::from_secs(2);
        let r = rates(&before, &after, &progress.snapshot());
        assert_eq!(r.bytes_per_second, 100.0);
        assert_eq!(r.documents_per_second, 1.0);
        assert_eq!(r.updates_per_second, 25.0);
        assert_eq!(r.events_per_second, 25.0);
        assert_eq!(r.copy_eta_seconds, Some(4.0));
        assert_eq!(r.catch_up_eta_seconds, Some(8.0));
    }
}
