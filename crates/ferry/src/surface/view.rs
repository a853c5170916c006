//! What a person watching sees: on a terminal, a live view redrawn in place; elsewhere, a
//! structured progress log line every few seconds (phase changes are logged by the migration).

use std::io::Write;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::lifecycle::State;
use crate::lifecycle::COMMITTABLE_LAG_SECONDS;
use crate::progress::{Progress, Snapshot};

/// Redraws the live view (terminal) or logs a progress line (otherwise) until `stop`.
pub async fn run(progress: Progress, terminal: bool, stop: CancellationToken) {
    let interval = if terminal {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let mut drawn_lines = 0;
    loop {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = stop.cancelled() => true,
        };
        let snapshot = progress.snapshot();
        if terminal {
            let view = render(&snapshot);
            let mut err = std::io::stderr().lock();
            if drawn_lines > 0 {
                let _ = write!(err, "\x1b[{drawn_lines}A\x1b[J");
            }
            let _ = err.write_all(view.as_bytes());
            let _ = err.flush();
            drawn_lines = view.lines().count();
        } else {
            tracing::info!(
                state = snapshot.state.as_str(),
                phase = snapshot.phase.as_str(),
                copied_bytes = snapshot.copied_bytes(),
                total_bytes = snapshot.total_bytes(),
                copied_documents = snapshot.copied_documents(),
                documents_per_second = snapshot.rates.documents_per_second.round(),
                events_applied = snapshot.events.total(),
                lag_seconds = snapshot.lag_time_seconds,
                can_commit = snapshot.can_commit,
                "progress"
            );
        }
        if stopped {
            return;
        }
    }
}

/// The live terminal view of one snapshot (its rates are measured by `rates`).
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let elapsed = s.started.elapsed().as_secs();
    out.push_str(&format!(
        "Ferry  {}  ·  {}  ·  {:02}:{:02}:{:02}\n",
        s.state.as_str(),
        s.phase.as_str(),
        elapsed / 3600,
        elapsed / 60 % 60,
        elapsed % 60
    ));
    let total = s.total_bytes();
    out.push_str(&format!(
        "  copy   {} of {} ({}%)  ·  {} documents  ·  {:.0} docs/s\n",
        human_bytes(s.copied_bytes()),
        human_bytes(total),
        percent(s.copied_bytes(), total),
        s.copied_documents(),
        s.rates.documents_per_second
    ));
    for c in s.collections.iter().filter(|c| !c.done).take(8) {
        let total = c.estimated_total_bytes.max(c.copied_bytes);
        let filled = (percent(c.copied_bytes, total) / 5) as usize;
        out.push_str(&format!(
            "    {:<40} [{}{}] {:>3}%  {} docs\n",
            truncate(&c.namespace, 40),
            "#".repeat(filled),
            "-".repeat(20 - filled),
            percent(c.copied_bytes, total),
            c.copied_documents
        ));
    }
    let e = &s.events;
    out.push_str(&format!(
        "  changes applied {}  (insert {}, update {}, replace {}, delete {}, ddl {})\n",
        e.total(),
        e.insert,
        e.update,
        e.replace,
        e.delete,
        e.ddl
    ));
    if let Some(v) = &s.verification {
        out.push_str(&format!(
            "  verify {}  ·  {} documents checked  ·  {} waiting for re-check  ·  {} mismatches\n",
            v.state, v.documents_checked, v.recheck_queued, v.mismatches
        ));
    }
    out.push_str(&format!(
        "  lag    {}\n",
        s.lag_time_seconds
            .map_or("not measured yet".to_string(), |l| format!("{l} s"))
    ));
    let status = match s.state {
        State::Running if s.can_commit => format!(
            "  ✔ Safe to cut over (lag ≤ {COMMITTABLE_LAG_SECONDS} s): stop the application's writes, then run `ferry commit`"
        ),
        State::Running => "  … not ready to cut over yet".to_string(),
        State::Paused => format!(
            "  ⏸ PAUSED: {} (`ferry resume` continues)",
            s.paused_reason.as_deref().unwrap_or("paused")
        ),
        State::Committing => "  ⏳ committing: applying the last changes and restoring constraints".to_string(),
        State::Committed => "  ✔ COMMITTED: point the application at the destination".to_string(),
        State::Failed => format!("  ✘ FAILED: {}", s.error.as_deref().unwrap_or("see the log")),
        State::Idle => "  idle".to_string(),
    };
    out.push_str(&status);
    out.push('\n');
    if let Some(reason) = &s.retrying {
        out.push_str(&format!("  ↻ retrying: {}\n", truncate(reason, 100)));
    }
    out
}

fn percent(part: u64, whole: u64) -> u64 {
    part.saturating_mul(100)
        .checked_div(whole)
        .map_or(100, |p| p.min(100))
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let kept: String = text.chars().take(width - 1).collect();
        format!("{kept}…")
    }
}

/// Bytes in B, KB, MB, GB (powers of 1024).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Phase;
    use crate::progress::CollectionProgress;

    #[test]
    fn view_shows_phase_collections_lag_and_cutover_readiness() {
        let progress = Progress::default();
        progress.update(|s| {
            s.state = State::Running;
            s.phase = Phase::ChangeEventApplication;
            s.can_commit = true;
            s.lag_time_seconds = Some(1);
            s.collections.push(CollectionProgress {
                namespace: "shop.orders".into(),
                estimated_total_bytes: 2048,
                copied_bytes: 1024,
                copied_documents: 10,
                ..Default::default()
            });
        });
        let view = render(&progress.snapshot());
        assert!(view.contains("RUNNING"), "{view}");
        assert!(view.contains("change event application"), "{view}");
        assert!(view.contains("shop.orders"), "{view}");
        assert!(view.contains("[##########----------]  50%"), "{view}");
        assert!(view.contains("lag    1 s"), "{view}");
        assert!(view.contains("Safe to cut over"), "{view}");
        progress.update(|s| s.retrying = Some("connection refused".into()));
        let view = render(&progress.snapshot());
        assert!(view.contains("↻ retrying: connection refused"), "{view}");
    }

    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GB");
    }
}
