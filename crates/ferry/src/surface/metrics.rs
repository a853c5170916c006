//! `GET /metrics` in the Prometheus text format, read from the same snapshot as the progress
//! reply so the two always agree. Namespace labels are bounded: past the first
//! [`MAX_NAMESPACE_LABELS`] namespaces the rest are summed under `namespace="other"`.

use std::fmt::Write;

use crate::lifecycle::{Phase, State};
use crate::progress::Snapshot;

pub const MAX_NAMESPACE_LABELS: usize = 100;

/// Escapes a label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text of one snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let by_namespace = |value: fn(&crate::progress::CollectionProgress) -> u64| {
        let mut samples: Vec<(String, f64)> = s
            .collections
            .iter()
            .take(MAX_NAMESPACE_LABELS)
            .map(|c| {
                (
                    format!("{{namespace=\"{}\"}}", label(&c.namespace)),
                    value(c) as f64,
                )
            })
            .collect();
        if s.collections.len() > MAX_NAMESPACE_LABELS {
            let rest: u64 = s
                .collections
                .iter()
                .skip(MAX_NAMESPACE_LABELS)
                .map(value)
                .sum();
            samples.push(("{namespace=\"other\"}".into(), rest as f64));
        }
        samples
    };
    metric(
        "ferry_documents_copied_total",
        "counter",
        "Documents copied to the destination.",
        by_namespace(|c| c.copied_documents),
    );
    metric(
        "ferry_bytes_copied_total",
        "counter",
        "Bytes of documents copied to the destination.",
        by_namespace(|c| c.copied_bytes),
    );
    let e = &s.events;
    metric(
        "ferry_change_events_applied_total",
        "counter",
        "Change events applied to the destination, by type.",
        [
            ("insert", e.insert),
            ("update", e.update),
            ("replace", e.replace),
            ("delete", e.delete),
            ("ddl", e.ddl),
        ]
        .iter()
        .map(|(t, n)| (format!("{{type=\"{t}\"}}"), *n as f64))
        .collect(),
    );
    metric(
        "ferry_lag_seconds",
        "gauge",
        "Source latest write minus latest applied change.",
        vec![(
            String::new(),
            s.lag_time_seconds.map_or(f64::NAN, |l| l as f64),
        )],
    );
    metric(
        "ferry_can_commit",
        "gauge",
        "1 when the migration can be committed.",
        vec![(String::new(), f64::from(u8::from(s.can_commit)))],
    );
    metric(
        "ferry_retries_total",
        "counter",
        "Transient faults ridden out.",
        vec![(
            String::new(),
            (s.retries + crate::majority::resent()) as f64,
        )],
    );
    metric(
        "ferry_errors_total",
        "counter",
        "Errors by kind (transient: retried; fatal: the migration failed; refused: a check failed).",
        ["transient", "fatal", "refused"]
            .iter()
            .map(|k| (format!("{{kind=\"{k}\"}}"), *s.errors.get(*k).unwrap_or(&0) as f64))
            .collect(),
    );
    let phases = [
        Phase::Validating,
        Phase::CollectionCopy,
        Phase::IndexBuilding,
        Phase::ChangeEventApplication,
        Phase::RestoringConstraints,
        Phase::Done,
    ];
    metric(
        "ferry_phase",
        "gauge",
        "1 for the current phase.",
        phases
            .iter()
            .map(|p| {
                (
                    format!("{{phase=\"{}\"}}", p.as_str()),
                    f64::from(u8::from(*p == s.phase)),
                )
            })
            .collect(),
    );
    let states = [
        State::Idle,
        State::Running,
        State::Paused,
        State::Committing,
        State::Committed,
        State::Failed,
    ];
    metric(
        "ferry_state",
        "gauge",
        "1 for the current state.",
        states
            .iter()
            .map(|st| {
                (
                    format!("{{state=\"{}\"}}", st.as_str()),
                    f64::from(u8::from(*st == s.state)),
                )
            })
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{CollectionProgress, Progress};

    #[test]
    fn metrics_follow_the_snapshot_with_bounded_labels() {
        let progress = Progress::default();
        progress.update(|s| {
            for i in 0..(MAX_NAMESPACE_LABELS + 5) {
                s.collections.set(CollectionProgress {
                    namespace: format!("db.c{i}"),
                    copied_documents: 2,
                    ..Default::default()
                });
            }
            s.events.update = 7;
            s.lag_time_seconds = Some(3);
        });
        let text = render(&progress.snapshot());
        assert!(
            text.contains("ferry_documents_copied_total{namespace=\"db.c0\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ferry_documents_copied_total{namespace=\"other\"} 10\n"),
            "{text}"
        );
        assert!(!text.contains("db.c104"), "labels are bounded");
        assert!(
            text.contains("ferry_change_events_applied_total{type=\"update\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("ferry_lag_seconds 3\n"), "{text}");
        assert!(text.contains("ferry_state{state=\"IDLE\"} 1\n"), "{text}");
    }
}
