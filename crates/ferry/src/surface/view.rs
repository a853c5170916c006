//! What a person watching sees: on a terminal, a live view redrawn in place; elsewhere, a
//! structured progress log line every few seconds (phase changes are logged by the migration).
//! On a terminal the log lines go through [`LogWriter`], which erases the view before a line, so
//! that log lines scroll above the one live frame instead of leaving old frames behind.

use std::io::{self, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::lifecycle::{Direction, Phase, State, COMMITTABLE_LAG_SECONDS};
use crate::progress::{Progress, Snapshot};

/// Redraws the live view (terminal) or logs a progress line (otherwise) until `stop`.
pub async fn run(progress: Progress, terminal: bool, stop: CancellationToken) {
    let interval = if terminal {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    loop {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = stop.cancelled() => true,
        };
        let snapshot = progress.snapshot();
        if terminal {
            let _ = draw(&render(&snapshot));
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

/// The terminal as the live view left it: how many lines of its frame are on it. The view and
/// the log writer share it, so that each knows what to erase.
struct Screen {
    drawn: usize,
}

static SCREEN: Mutex<Screen> = Mutex::new(Screen { drawn: 0 });

impl Screen {
    /// Replaces the frame with `view`. Line wrapping is off while drawing, so a line wider
    /// than the terminal is cut at its edge and the frame's height stays its line count.
    fn frame(&mut self, out: &mut impl Write, view: &str) -> io::Result<()> {
        self.erase(out)?;
        write!(out, "\x1b[?7l{view}\x1b[?7h")?;
        self.drawn = view.lines().count();
        out.flush()
    }

    /// Writes log output where the frame was; the next frame is drawn below it.
    fn log(&mut self, out: &mut impl Write, text: &[u8]) -> io::Result<()> {
        self.erase(out)?;
        out.write_all(text)
    }

    fn erase(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.drawn > 0 {
            write!(out, "\x1b[{}A\x1b[J", self.drawn)?;
            self.drawn = 0;
        }
        Ok(())
    }
}

fn screen() -> std::sync::MutexGuard<'static, Screen> {
    SCREEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replaces the frame on the terminal with `view`.
fn draw(view: &str) -> io::Result<()> {
    screen().frame(&mut io::stderr().lock(), view)
}

/// Standard error for log lines: erases the live view first; the next frame is drawn below.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        screen().log(&mut io::stderr().lock(), buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// The live terminal view of one snapshot (its rates are measured by `rates`).
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let elapsed = s.started.elapsed().as_secs();
    let direction = match s.direction {
        Direction::Forward => "",
        Direction::Reverse => "reverse  ·  ",
    };
    let source = match s.source_version {
        Some(v) if !v.expanded_events() => format!("  ·  source {v}, catalog reconciled"),
        _ => String::new(),
    };
    out.push_str(&format!(
        "Ferry  {direction}{}  ·  {}  ·  {:02}:{:02}:{:02}{source}\n",
        s.state.as_str(),
        s.phase.as_str(),
        elapsed / 3600,
        elapsed / 60 % 60,
        elapsed % 60
    ));
    // The total is an estimate: the copy is 100% when it is done, and at most 99% before.
    let copy_done = s.phase > Phase::CollectionCopy;
    let (copied, total) = match copy_done {
        true => (s.copied_bytes(), s.copied_bytes()),
        false => (s.copied_bytes(), s.total_bytes()),
    };
    out.push_str(&format!(
        "  copy   {} of {} ({}%)  ·  {} documents  ·  {:.0} docs/s\n",
        human_bytes(copied),
        human_bytes(total),
        if copy_done {
            100
        } else {
            percent(copied, total)
        },
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
            "  ✔ Safe to cut over (lag ≤ {COMMITTABLE_LAG_SECONDS} s): stop the application's writes, then run `ferry commit`{}",
            s.cutover_deadline.map_or(String::new(), |d| format!(
                "\n  cutover window: {} left, then Ferry pauses on its own",
                countdown(d.saturating_duration_since(Instant::now()))
            ))
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

/// A part of a whole that is not complete yet: at most 99%.
fn percent(part: u64, whole: u64) -> u64 {
    part.saturating_mul(100)
        .checked_div(whole)
        .map_or(0, |p| p.min(99))
}

/// `71h 59m`, `4m 05s`.
fn countdown(left: Duration) -> String {
    let seconds = left.as_secs();
    if seconds >= 3600 {
        format!("{}h {:02}m", seconds / 3600, seconds / 60 % 60)
    } else {
        format!("{}m {:02}s", seconds / 60, seconds % 60)
    }
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
            s.collections.set(CollectionProgress {
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
    fn the_copy_is_100_percent_only_when_done_and_the_cutover_window_counts_down() {
        let progress = Progress::default();
        progress.update(|s| {
            s.state = State::Running;
            s.phase = Phase::CollectionCopy;
            s.collections.set(CollectionProgress {
                namespace: "shop.orders".into(),
                estimated_total_bytes: 1000,
                copied_bytes: 1000,
                ..Default::default()
            });
        });
        let view = render(&progress.snapshot());
        assert!(view.contains("1000 B of 1000 B (99%)"), "{view}");
        progress.update(|s| {
            s.phase = Phase::ChangeEventApplication;
            let ns = s
                .collections
                .iter()
                .next()
                .expect("a row")
                .namespace
                .clone();
            s.collections.get_mut(&ns).expect("the row").copied_bytes = 990;
            s.can_commit = true;
            s.cutover_deadline = Some(Instant::now() + Duration::from_secs(3 * 3600 + 125));
        });
        let view = render(&progress.snapshot());
        assert!(view.contains("990 B of 990 B (100%)"), "{view}");
        assert!(view.contains("cutover window: 3h 02m left"), "{view}");
        assert_eq!(countdown(Duration::from_secs(245)), "4m 05s");
    }

    /// What a terminal shows after `bytes`: text, line feeds, cursor up (`ESC[nA`), erase
    /// below (`ESC[J`); other sequences change nothing shown here.
    fn shown(bytes: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(bytes);
        let (mut lines, mut row) = (vec![String::new()], 0usize);
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\n' => {
                    row += 1;
                    if lines.len() <= row {
                        lines.push(String::new());
                    }
                }
                '\x1b' => {
                    chars.next(); // '['
                    let mut argument = String::new();
                    let command = loop {
                        match chars.next() {
                            Some(c) if c.is_ascii_digit() || c == '?' => argument.push(c),
                            other => break other,
                        }
                    };
                    match command {
                        Some('A') => row -= argument.parse::<usize>().unwrap(),
                        Some('J') => {
                            lines.truncate(row + 1);
                            lines[row].clear();
                        }
                        _ => {}
                    }
                }
                c => lines[row].push(c),
            }
        }
        lines.into_iter().filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn one_frame_stays_on_screen_and_log_lines_scroll_above_it() {
        let mut screen = Screen { drawn: 0 };
        let mut out = Vec::new();
        screen.frame(&mut out, "validating\nlag\n").unwrap();
        screen.log(&mut out, b"WARN a warning\n").unwrap();
        screen
            .frame(&mut out, "copying\nlag 2 s\nstatus\n")
            .unwrap();
        screen
            .frame(&mut out, "syncing\nlag 1 s\nstatus\n")
            .unwrap();
        assert_eq!(
            shown(&out),
            ["WARN a warning", "syncing", "lag 1 s", "status"]
        );
    }

    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GB");
    }
}
