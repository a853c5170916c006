//! What the source server is: its version, and what that version lets Ferry rely on.
//!
//! `FERRY_TEST_SOURCE_VERSION=X.Y[.Z]` makes Ferry treat the source as that version everywhere
//! a decision depends on it, so that the behaviour for older servers can be exercised against
//! the test server (see DESIGN.md, "Testing what the test server cannot show").

use std::fmt;

use mongodb::bson::doc;
use mongodb::Client;

/// The environment variable that overrides the source's reported version (tests).
pub const VERSION_OVERRIDE: &str = "FERRY_TEST_SOURCE_VERSION";

/// A server version, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses `8.2.1`, `6.0`, or `7.0.2-rc1` (what follows the numbers is ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Self::new(major, minor, patch))
    }

    /// Update events say which paths are literal field names (`disambiguatedPaths`).
    pub fn disambiguates_paths(self) -> bool {
        self >= Version::new(6, 1, 0)
    }

    /// The change stream can split an event over 16 MiB into fragments
    /// (`$changeStreamSplitLargeEvent`).
    pub fn splits_large_events(self) -> bool {
        self >= Version::new(7, 0, 0) || (self.major == 6 && self.minor == 0 && self.patch >= 9)
    }

    /// The change stream reports DDL and collection UUIDs (`showExpandedEvents`).
    pub fn expanded_events(self) -> bool {
        self >= Version::new(6, 0, 0)
    }

    /// Writes can be blocked cluster-wide (`setUserWriteBlockMode`).
    pub fn blocks_user_writes(self) -> bool {
        self >= Version::new(6, 0, 0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The version a server reports in `buildInfo`.
pub async fn build_version(client: &Client) -> Option<String> {
    let info = client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await
        .ok()?;
    info.get_str("version").ok().map(str::to_string)
}

/// The source's version as Ferry treats it: the override when set, else what it reports.
pub async fn source_version(source: &Client) -> Option<Version> {
    if let Some(version) = overridden() {
        return Some(version);
    }
    Version::parse(&build_version(source).await?)
}

/// The version `FERRY_TEST_SOURCE_VERSION` names, if set and valid.
pub fn overridden() -> Option<Version> {
    std::env::var(VERSION_OVERRIDE)
        .ok()
        .and_then(|v| Version::parse(&v))
}

/// The featureCompatibilityVersion of a cluster.
pub async fn fcv(client: &Client) -> Option<String> {
    let reply = client
        .database("admin")
        .run_command(doc! { "getParameter": 1, "featureCompatibilityVersion": 1 })
        .await
        .ok()?;
    reply
        .get_document("featureCompatibilityVersion")
        .ok()?
        .get_str("version")
        .ok()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_say_what_they_allow() {
        let v = |s| Version::parse(s).unwrap();
        assert_eq!(v("8.2.1"), Version::new(8, 2, 1));
        assert_eq!(v("6.0"), Version::new(6, 0, 0));
        assert_eq!(v("7.0.2-rc1"), Version::new(7, 0, 2));
        assert_eq!(Version::parse("x"), None);
        assert!(!v("6.0").disambiguates_paths() && v("6.1").disambiguates_paths());
        assert!(!v("6.0.8").splits_large_events() && v("6.0.9").splits_large_events());
        assert!(!v("6.3").splits_large_events() && v("7.0").splits_large_events());
        assert!(!v("5.0.20").blocks_user_writes() && v("6.0").blocks_user_writes());
    }
}
