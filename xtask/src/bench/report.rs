//! `docs/BENCHMARKS.md` from the measurements of one run.

use std::fmt::Write as _;

use super::apply::ApplyResult;
use super::namespaces::NamespacesResult;
use super::SizeResult;

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .map_or("?".into(), |kb| {
            format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    format!("{cores} cores ({cpu}), {memory} memory; source, destination, Ferry and the load generator on the same machine; servers: secantusd-rs {}", testkit::server::SECANTUS_VERSION)
}

pub fn render(
    ceiling: Option<(f64, f64, usize)>,
    results: &[SizeResult],
    apply: Option<&ApplyResult>,
    namespaces: &[NamespacesResult],
) -> String {
    let mut out = String::new();
    let mb = |b: f64| b / 1_000_000.0;
    let _ = writeln!(
        out,
        "# Benchmarks\n\nMade by `cargo xtask bench` on {}.\n",
        machine()
    );
    let ceiling = ceiling.unwrap_or((f64::NAN, f64::NAN, 0));
    if !results.is_empty() {
        let _ = writeln!(
            out,
            "Destination write ceiling (unordered bulk inserts of in-memory ~1 KB documents, best of 1/2/4/8 writers): **{:.0} documents/s, {:.1} MB/s** ({} writers).\n",
            ceiling.0,
            mb(ceiling.1),
            ceiling.2
        );
        copy_tables(&mut out, ceiling, results);
    }
    if let Some(a) = apply {
        apply_table(&mut out, a);
    }
    if !namespaces.is_empty() {
        namespaces_table(&mut out, namespaces);
    }
    out
}

/// The initial copy against the floor, the ceiling and the naive copy, by size.
fn copy_tables(out: &mut String, ceiling: (f64, f64, usize), results: &[SizeResult]) {
    let mb = |b: f64| b / 1_000_000.0;
    let _ = writeln!(out, "## Initial copy (launch to canCommit)\n");
    let _ = writeln!(out, "| documents | data | Ferry | floor (pipes + index build) | Ferry / floor | Ferry docs/s | Ferry / ceiling | naive copy | Ferry / naive (speed) | Ferry peak memory to canCommit | Ferry peak memory, whole run |");
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let megabytes = |m: Option<u64>| m.map_or("?".into(), |m| format!("{:.0} MB", m as f64 / 1e6));
    for r in results {
        let rate = r.copied_documents() / r.ferry_seconds;
        let _ = writeln!(
            out,
            "| {} | {:.0} MB | {:.1} s | {:.1} s | {:.2}× | {:.0} | {:.0}% | {:.1} s | {:.2}× | {} | {} |",
            r.documents,
            mb(r.data_bytes),
            r.ferry_seconds,
            r.floor.seconds(),
            r.ferry_seconds / r.floor.seconds(),
            rate,
            rate / ceiling.0 * 100.0,
            r.naive_seconds,
            r.naive_seconds / r.ferry_seconds,
            megabytes(r.copy_memory),
            megabytes(r.peak_memory)
        );
    }
    for r in results {
        if let Some(baseline) = r.baseline_seconds {
            let _ = writeln!(
                out,
                "\n{} documents, the baseline build (`FERRY_BENCH_BASELINE`) in the same run: {:.1} s to canCommit, this build {:.1} s ({:.2}× the speed).",
                r.documents,
                baseline,
                r.ferry_seconds,
                baseline / r.ferry_seconds
            );
        }
    }
    let _ = writeln!(
        out,
        "\nWhere Ferry's time goes, and the copy phase alone against the ceiling:\n"
    );
    let _ = writeln!(out, "| documents | launch → copy (pre-flight) | copy start → first document | copy (with the index builds beside it) | index builds after the copy | copy phase docs/s | copy phase / ceiling |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
    for r in results {
        let rate = r.copied_documents() / r.copy_seconds;
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {} | {:.1} s | {:.1} s | {:.0} | {:.0}% |",
            r.documents,
            r.pre_copy_seconds,
            r.first_copied_seconds
                .map_or("?".into(), |s| format!("{s:.1} s")),
            r.copy_seconds,
            r.index_seconds,
            rate,
            rate / ceiling.0 * 100.0
        );
    }
    let _ = writeln!(
        out,
        "\nThe floor, measured on the same data just before Ferry: the large collection copied by range pipes with bounds known in advance (best of 2, 4 and 8), then its two indexes built on that copy; and the same pipes into a collection whose indexes were created first.\n"
    );
    let _ = writeln!(out, "| documents | pipes | pipes' copy | index build after | floor | pipes into an indexed collection |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    for r in results {
        let f = &r.floor;
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} s | {:.1} s | {:.1} s | {:.1} s |",
            r.documents,
            f.pipes,
            f.copy_seconds,
            f.index_seconds,
            f.seconds(),
            f.indexes_first_seconds
        );
    }
    for pair in results.windows(2) {
        let (small, large) = (&pair[0], &pair[1]);
        let _ = writeln!(
            out,
            "\nScaling {} → {}: {:.1}× the data took {:.2}× the time.",
            small.documents,
            large.documents,
            large.documents as f64 / small.documents as f64,
            large.ferry_seconds / small.ferry_seconds,
        );
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        if results.len() > 1 {
            let _ = writeln!(
                out,
                "\nPeak memory to canCommit {} → {} documents: {:+.0}%.",
                first.documents,
                last.documents,
                (last.copy_memory.unwrap_or(0) as f64 / first.copy_memory.unwrap_or(1) as f64
                    - 1.0)
                    * 100.0
            );
        }
    }
}

fn apply_table(out: &mut String, a: &ApplyResult) {
    let _ = writeln!(out, "\n## Change application\n");
    let _ = writeln!(out, "| source writes/s ({} clients at their maximum, and a hot document) | of which the hot document | applied events/s | steady lag (mean / max) | backlog | catch-up | catch-up speed |", a.writers);
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
    let _ = writeln!(
        out,
        "| {:.0} | {:.0} | {:.0} | {:.1} s / {} s | {:.0} s | {:.1} s | {:.1}× |",
        a.source_rate,
        a.hot_rate,
        a.apply_rate,
        a.steady_lag_mean,
        a.steady_lag_max,
        a.backlog_seconds,
        a.catch_up_seconds,
        a.backlog_seconds / a.catch_up_seconds
    );
}

fn namespaces_table(out: &mut String, results: &[NamespacesResult]) {
    let _ = writeln!(out, "\n## Many namespaces\n");
    let _ = writeln!(
        out,
        "Collections of 20 documents and one secondary index each, over 10 databases.\n"
    );
    let _ = writeln!(out, "| collections | naive single client | Ferry to canCommit | naive / Ferry (speed) | Ferry peak memory | largest progress reply | canCommit → committed |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {:.1} s | {:.2}× | {} | {:.1} KB | {:.1} s |",
            r.collections,
            r.naive_seconds,
            r.ferry_seconds,
            r.naive_seconds / r.ferry_seconds,
            r.peak_memory
                .map_or("?".into(), |m| format!("{:.0} MB", m as f64 / 1e6)),
            r.largest_reply as f64 / 1024.0,
            r.commit_seconds
        );
    }
    for r in results {
        if let Some(baseline) = r.baseline_seconds {
            let _ = writeln!(
                out,
                "\n{} collections, the baseline build (`FERRY_BENCH_BASELINE`) in the same run: {:.1} s to canCommit, this build {:.1} s.",
                r.collections, baseline, r.ferry_seconds
            );
        }
    }
    for pair in results.windows(2) {
        let (small, large) = (&pair[0], &pair[1]);
        let _ = writeln!(
            out,
            "\n{} → {} collections ({:.1}×): {:.2}× the time, {:.2}× the peak memory.",
            small.collections,
            large.collections,
            large.collections as f64 / small.collections as f64,
            large.ferry_seconds / small.ferry_seconds,
            large.peak_memory.unwrap_or(0) as f64 / small.peak_memory.unwrap_or(1) as f64
        );
    }
}
