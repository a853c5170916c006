//! What a verification found, per namespace: documents checked, mismatches by kind with the
//! first `_id`s and a short field-level diff, and metadata differences. Printed for people or
//! as JSON for machines.

use serde::Serialize;

/// How many mismatching documents are shown with their `_id` and diff.
pub const EXAMPLES: usize = 10;

/// One mismatching document.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mismatch {
    /// `missing` (not on the destination), `extra` (only on the destination), `different`, or
    /// `expired` (on one side only, and expired under a TTL index: not a difference).
    pub kind: &'static str,
    /// The document's `_id`, as extended JSON.
    pub id: serde_json::Value,
    /// For `different`: what differs, field by field.
    pub diff: Vec<String>,
}

/// The verification of one namespace.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceReport {
    pub namespace: String,
    pub documents_checked: u64,
    /// Of those, the documents an earlier pass or an interrupted run verified.
    pub documents_resumed: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// Documents on one side only that a TTL index has expired: both servers remove them on
    /// their own schedule, so they are not differences (see `expiry`).
    pub expired: u64,
    pub examples: Vec<Mismatch>,
    /// Differences of options, indexes, view definitions, or existence.
    pub metadata: Vec<String>,
}

impl NamespaceReport {
    pub fn is_equal(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0 && self.metadata.is_empty()
    }

    pub fn record(&mut self, mismatch: Mismatch) {
        match mismatch.kind {
            "expired" => {
                self.expired += 1;
                return;
            }
            "missing" => self.missing += 1,
            "extra" => self.extra += 1,
            _ => self.different += 1,
        }
        if self.examples.len() < EXAMPLES {
            self.examples.push(mismatch);
        }
    }
}

/// The verification of a whole migration.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub equal: bool,
    pub documents_checked: u64,
    /// Of those, the documents an earlier pass or an interrupted run verified.
    pub documents_resumed: u64,
    /// Documents compared again from the re-check queue (during a migration).
    pub rechecked: u64,
    /// Documents on one side only that a TTL index has expired (not differences).
    pub expired: u64,
    pub namespaces: Vec<NamespaceReport>,
    /// The verifying process's peak resident memory, where the system reports it.
    pub peak_memory_bytes: Option<u64>,
}

impl Report {
    pub fn finish(mut self) -> Self {
        self.equal = self.namespaces.iter().all(NamespaceReport::is_equal);
        self.documents_checked = self.namespaces.iter().map(|n| n.documents_checked).sum();
        self.documents_resumed = self.namespaces.iter().map(|n| n.documents_resumed).sum();
        self.expired = self.namespaces.iter().map(|n| n.expired).sum();
        self.peak_memory_bytes = peak_memory_bytes();
        self
    }

    /// A readable report: one line per namespace, then the details of what differs.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for ns in &self.namespaces {
            let status = if ns.is_equal() {
                "equal    "
            } else {
                "DIFFERENT"
            };
            let expired = match ns.expired {
                0 => String::new(),
                n => format!("; {n} expired on one side, which its TTL index removes on both"),
            };
            out.push_str(&format!(
                "{status} {}  ({} documents checked, {} missing, {} extra, {} different{expired})\n",
                ns.namespace, ns.documents_checked, ns.missing, ns.extra, ns.different
            ));
            for difference in &ns.metadata {
                out.push_str(&format!("    metadata: {difference}\n"));
            }
            for example in &ns.examples {
                out.push_str(&format!("    {} _id {}\n", example.kind, example.id));
                for line in &example.diff {
                    out.push_str(&format!("        {line}\n"));
                }
            }
        }
        out.push_str(&if self.equal {
            format!(
                "EQUAL: {} namespaces, {} documents checked\n",
                self.namespaces.len(),
                self.documents_checked
            )
        } else {
            format!(
                "NOT EQUAL: {} of {} namespaces differ\n",
                self.namespaces.iter().filter(|n| !n.is_equal()).count(),
                self.namespaces.len()
            )
        });
        out
    }
}

/// Peak resident memory of this process (Linux `VmHWM`).
fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
