//! The outcome of the pre-flight checks: one line per check with what was found and, when it
//! failed, what to do. Each check has a stable id, so scripts and runbooks can refer to it.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Not run: it depends on something another check found missing.
    Skip,
}

/// The result of one check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    /// What was found.
    pub found: String,
    /// What to do about it (for warnings and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(id: &'static str, found: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Pass,
            found: found.into(),
            fix: None,
        }
    }

    pub fn warn(id: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Warn,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check that cannot run because of what another check found; `needs` says what.
    pub fn skip(id: &'static str, needs: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Skip,
            found: needs.into(),
            fix: None,
        }
    }

    pub fn fail(id: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub blocking: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, check: Check) {
        self.blocking |= check.status == Status::Fail;
        self.checks.push(check);
    }

    /// One line per check, with the fix under each warning or failure.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let mark = match check.status {
                Status::Pass => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            out.push_str(&format!("{mark} {:<24} {}\n", check.id, check.found));
            if let Some(fix) = &check.fix {
                out.push_str(&format!("     {:<24} fix: {fix}\n", ""));
            }
        }
        out.push_str(if self.blocking {
            "blocked: fix the failed checks above, then run again\n"
        } else {
            "nothing blocks the migration\n"
        });
        out
    }

    /// The failed checks, as the one message `ferry migrate` refuses to start with.
    pub fn refusal(&self) -> String {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| format!("[{}] {}: {}", c.id, c.found, c.fix.as_deref().unwrap_or("")))
            .collect();
        format!("pre-flight checks failed:\n  {}", failed.join("\n  "))
    }
}
