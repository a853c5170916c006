//! Whether the migration fits: the source's oplog window against the copy's expected duration,
//! and the destination's disk against the source's data.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::Client;

use crate::catalog::{CollectionSpec, Kind};
use crate::preflight::report::Check;
use crate::reply::number;
use crate::server_error;

/// Bytes per second read from the largest included collection, over a short sample.
async fn read_rate(source: &Client, included: &[CollectionSpec]) -> Option<f64> {
    let spec = included.iter().find(|s| s.kind == Kind::Collection)?;
    let started = Instant::now();
    let mut cursor = source
        .database(&spec.db)
        .collection::<RawDocumentBuf>(&spec.name)
        .find(doc! {})
        .limit(20_000)
        .await
        .ok()?;
    let mut bytes = 0usize;
    while let Ok(Some(document)) = cursor.try_next().await {
        bytes += document.as_bytes().len();
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    (bytes > 1_000_000 && seconds > 0.0).then(|| bytes as f64 / seconds)
}

/// What the pre-flight learns about the source's oplog and read speed.
#[derive(Debug, Default, PartialEq)]
pub struct OplogReading {
    /// The oplog's size and maximum size in bytes, when the server reports them.
    pub size: Option<(f64, f64)>,
    /// Seconds between the oldest entry and the newest write; `None` when unread.
    pub span: Option<f64>,
    /// Bytes per second read from one collection (`ferry check`): the copy takes about twice
    /// as long as reading.
    pub read_rate: Option<f64>,
    /// Bytes per second the copy itself went, when it is under way (a migration's).
    pub copy_rate: Option<f64>,
    /// The oplog could not be read at all.
    pub unreadable: bool,
    /// The server did not answer within [`OPLOG_READING_BUDGET`].
    pub slow: bool,
}

/// How long the pre-flight waits for each of the oplog's statistics. They only inform a
/// forecast, and some servers (or a loaded primary) take long to answer them; the migration
/// measures the window as it runs (`oplogWindowSeconds`).
const OPLOG_READING_BUDGET: Duration = Duration::from_secs(3);

/// The server code for an operation stopped by its `maxTimeMS`.
const MAX_TIME_EXPIRED: i32 = 50;

/// Reads the oplog's size and the read speed at once, and the oldest entry only when the size
/// is known: without it no window can be forecast, and on servers that keep the oplog as an
/// ordinary collection finding the oldest entry scans all of it. A read that does not answer
/// within [`OPLOG_READING_BUDGET`] makes the reading `slow`.
pub async fn read_oplog(
    source: &Client,
    included: &[CollectionSpec],
    hello: &Document,
) -> OplogReading {
    let (reading, read_rate) = tokio::join!(
        oplog_size_and_span(source, hello),
        read_rate(source, included)
    );
    OplogReading {
        read_rate,
        ..reading
    }
}

/// The oplog's size and maximum, and its span when the size is known (the read rate is left
/// for the caller).
pub async fn oplog_size_and_span(source: &Client, hello: &Document) -> OplogReading {
    let slow = OplogReading {
        slow: true,
        ..Default::default()
    };
    let local = source.database("local");
    let budget = OPLOG_READING_BUDGET.as_millis() as i64;
    let stats = tokio::time::timeout(
        OPLOG_READING_BUDGET,
        local.run_command(doc! { "collStats": "oplog.rs", "maxTimeMS": budget }),
    )
    .await;
    let stats = match stats {
        Err(_) => return slow,
        Ok(Err(e)) if server_error::driver_code(&e) == Some(MAX_TIME_EXPIRED) => return slow,
        Ok(Err(_)) => {
            return OplogReading {
                unreadable: true,
                ..Default::default()
            }
        }
        Ok(Ok(stats)) => stats,
    };
    let size = match (number(&stats, "size"), number(&stats, "maxSize")) {
        (Some(size), Some(max)) if size > 0.0 && max > 0.0 => Some((size, max)),
        _ => None,
    };
    let mut reading = OplogReading {
        size,
        ..Default::default()
    };
    if size.is_none() {
        return reading;
    }
    let newest = hello
        .get_document("lastWrite")
        .and_then(|w| w.get_document("opTime"))
        .and_then(|o| o.get_timestamp("ts"));
    match (
        tokio::time::timeout(
            OPLOG_READING_BUDGET,
            crate::source::oplog::oldest_entry(source),
        )
        .await,
        newest,
    ) {
        (Err(_), _) => reading.slow = true,
        (Ok(Ok(Some(oldest))), Ok(newest)) => {
            reading.span = Some(f64::from(newest.time.saturating_sub(oldest.time)));
        }
        _ => reading.unreadable = true,
    }
    reading
}

/// The source's oplog window against the time the copy of `data` bytes will take.
pub fn oplog_window(reading: &OplogReading, data: f64) -> Check {
    const ID: &str = "source.oplog-window";
    if reading.unreadable {
        return Check::warn(ID, "could not read the source's oplog (local.oplog.rs)", "grant the source user read access to the local database, and make sure the oplog is large enough for the whole copy");
    }
    let hours = |s: f64| format!("{:.1} h", s / 3600.0);
    let estimate = reading
        .copy_rate
        .map(|rate| data / rate)
        .or_else(|| reading.read_rate.map(|rate| data / rate * 2.0));
    let copy_time = estimate.map_or(String::new(), |e| {
        format!(", the copy will take about {}", hours(e))
    });
    let (Some((size, max)), Some(span)) = (reading.size, reading.span) else {
        let missing = if reading.slow {
            format!(
                "the source did not report its oplog within {} s",
                OPLOG_READING_BUDGET.as_secs()
            )
        } else {
            "the source does not report its oplog's size".to_string()
        };
        return Check::warn(
            ID,
            format!("{missing}, so its window cannot be forecast{copy_time}"),
            "make sure the source's oplog holds more than the copy time; Ferry shows the history left as oplogWindowSeconds while it runs",
        );
    };
    // A full oplog's window is its span; a filling one will hold about span × max / size.
    let capacity = if size >= 0.9 * max {
        Some(span)
    } else if span >= 60.0 {
        Some(span * max / size)
    } else {
        None
    };
    match (capacity, estimate) {
        (Some(capacity), Some(estimate)) if capacity < estimate => Check::fail(
            ID,
            format!("the oplog holds about {} of history, the copy will take about {}", hours(capacity), hours(estimate)),
            "enlarge the source's oplog (replSetResizeOplog, oplogMinRetentionHours) to well over the copy time, or the changes made during the copy will be lost",
        ),
        (Some(capacity), Some(estimate)) if capacity < 3.0 * estimate => Check::warn(
            ID,
            format!("the oplog holds about {} of history, the copy will take about {}", hours(capacity), hours(estimate)),
            "the margin is thin: enlarge the source's oplog before migrating",
        ),
        (Some(capacity), _) => Check::pass(
            ID,
            format!("the oplog holds about {} of history{copy_time}", hours(capacity)),
        ),
        (None, _) => Check::pass(ID, format!("the oplog is not full yet ({span:.0} s of history so far)")),
    }
}

/// Bytes in GB with one decimal; nothing (an empty sum of floats is -0.0) reads `0.0 GB`.
fn gb(bytes: f64) -> String {
    format!("{:.1} GB", bytes.max(0.0) / 1e9 + 0.0)
}

/// Room on the destination for the source's data, where the server reports its disk.
pub async fn destination_disk(destination: &Client, source_bytes: f64) -> Check {
    const ID: &str = "destination.disk";
    let stats = destination
        .database("admin")
        .run_command(doc! { "dbStats": 1, "freeStorage": 1 })
        .await
        .ok();
    let free = stats
        .as_ref()
        .and_then(|s| Some(number(s, "fsTotalSize")? - number(s, "fsUsedSize")?));
    match free {
        Some(free) if free > 0.0 && free < source_bytes => Check::fail(
            ID,
            format!(
                "{} free on the destination's disk, {} of data to copy",
                gb(free),
                gb(source_bytes)
            ),
            "give the destination more disk than the source's data (plus indexes and growth)",
        ),
        Some(free) if free > 0.0 && free < 1.5 * source_bytes => Check::warn(
            ID,
            format!(
                "{} free on the destination's disk, {} of data to copy",
                gb(free),
                gb(source_bytes)
            ),
            "the margin is thin: indexes and the oplog need room too",
        ),
        Some(free) if free > 0.0 => Check::pass(
            ID,
            format!("{} free, {} of data to copy", gb(free), gb(source_bytes)),
        ),
        _ => Check::pass(
            ID,
            format!(
                "the destination does not report its disk; {} of data to copy",
                gb(source_bytes)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{gb, oplog_window, OplogReading};

    #[test]
    fn no_data_reads_as_zero_gigabytes() {
        let nothing: f64 = std::iter::empty::<f64>().sum();
        assert_eq!(gb(nothing), "0.0 GB");
        assert_eq!(gb(1.5e9), "1.5 GB");
    }
    use crate::preflight::Status;

    const GB: f64 = 1e9;

    fn reading(size: Option<(f64, f64)>, span: Option<f64>) -> OplogReading {
        OplogReading {
            size,
            span,
            // 10 MB/s: copying 36 GB then takes about 2 h (twice the read time).
            read_rate: Some(10e6),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_oplog_shorter_than_the_copy_refuses_and_a_roomy_one_passes() {
        let full_one_hour = reading(Some((GB, GB)), Some(3600.0));
        let check = oplog_window(&full_one_hour, 36.0 * GB);
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.found.contains("1.0 h of history"), "{check:?}");
        assert!(check.found.contains("2.0 h"), "{check:?}");
        let thin = oplog_window(&reading(Some((GB, GB)), Some(4.0 * 3600.0)), 36.0 * GB);
        assert_eq!(thin.status, Status::Warn, "{thin:?}");
        let roomy = oplog_window(&reading(Some((GB, GB)), Some(24.0 * 3600.0)), 36.0 * GB);
        assert_eq!(roomy.status, Status::Pass, "{roomy:?}");
    }

    #[test]
    fn a_running_copy_is_forecast_by_its_own_rate_not_twice_it() {
        // 36 GB at a copy rate of 10 MB/s: one hour, which an oplog of 1.5 h holds, thinly.
        let copying = OplogReading {
            copy_rate: Some(10e6),
            ..reading(Some((GB, GB)), Some(5400.0))
        };
        let check = oplog_window(&copying, 36.0 * GB);
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(check.found.contains("will take about 1.0 h"), "{check:?}");
    }

    #[test]
    fn a_filling_oplog_is_judged_by_what_it_will_hold() {
        // A quarter full after one hour: it will hold about four hours.
        let filling = oplog_window(&reading(Some((GB, 4.0 * GB)), Some(3600.0)), 36.0 * GB);
        assert_eq!(filling.status, Status::Warn, "{filling:?}");
        assert!(filling.found.contains("4.0 h of history"), "{filling:?}");
        let young = oplog_window(&reading(Some((GB, 4.0 * GB)), Some(10.0)), 36.0 * GB);
        assert_eq!(young.status, Status::Pass, "{young:?}");
        assert!(young.found.contains("not full yet"), "{young:?}");
    }

    #[test]
    fn an_oplog_without_a_size_or_unreadable_is_a_warning_that_says_what_to_watch() {
        let no_size = oplog_window(&reading(None, None), 36.0 * GB);
        assert_eq!(no_size.status, Status::Warn, "{no_size:?}");
        assert!(no_size.found.contains("cannot be forecast"), "{no_size:?}");
        assert!(
            no_size
                .fix
                .as_deref()
                .unwrap()
                .contains("oplogWindowSeconds"),
            "{no_size:?}"
        );
        let unreadable = OplogReading {
            unreadable: true,
            ..Default::default()
        };
        let check = oplog_window(&unreadable, GB);
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(check.found.contains("could not read"), "{check:?}");
        // A late answer is named as late, not as missing.
        let slow = OplogReading {
            size: Some((GB, GB)),
            slow: true,
            ..Default::default()
        };
        let check = oplog_window(&slow, GB);
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(
            check.found.contains("did not report its oplog within 3 s"),
            "{check:?}"
        );
    }
}
