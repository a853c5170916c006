//! The supported version pairs and featureCompatibilityVersions.

use mongodb::Client;

use crate::preflight::report::Check;
use crate::source::info::{self, build_version, fcv, Version};

/// The supported version matrix: source 6.0 or newer (expanded change events), destination
/// not older than the source, and a destination featureCompatibilityVersion not below the
/// source's. The source's version is the one Ferry treats it as (see `source::info`).
pub async fn versions(source: &Client, destination: &Client) -> Check {
    const ID: &str = "versions";
    let (Some(reported), Some(dv)) = (
        build_version(source).await,
        build_version(destination).await,
    ) else {
        return Check::warn(
            ID,
            "a server did not report its version (buildInfo)",
            "check by hand that the destination is not older than the source",
        );
    };
    let (sfcv, dfcv) = (fcv(source).await, fcv(destination).await);
    let treated = info::overridden();
    let sv = match treated {
        Some(version) => format!(
            "{reported}, treated as {version} ({})",
            info::VERSION_OVERRIDE
        ),
        None => reported.clone(),
    };
    let found = format!(
        "source {sv} (FCV {}), destination {dv} (FCV {})",
        sfcv.as_deref().unwrap_or("?"),
        dfcv.as_deref().unwrap_or("?")
    );
    let (Some(s), Some(d)) = (
        treated.or_else(|| Version::parse(&reported)),
        Version::parse(&dv),
    ) else {
        return Check::warn(
            ID,
            found,
            "check by hand that the destination is not older than the source",
        );
    };
    if s < Version::new(6, 0, 0) {
        return Check::fail(ID, found, "upgrade the source to MongoDB 6.0 or newer: Ferry needs its expanded change events to follow DDL");
    }
    if (d.major, d.minor) < (s.major, s.minor) {
        return Check::fail(
            ID,
            found,
            "use a destination of the same or a newer MongoDB version than the source",
        );
    }
    if let (Some(sf), Some(df)) = (
        sfcv.as_deref().and_then(Version::parse),
        dfcv.as_deref().and_then(Version::parse),
    ) {
        if df < sf {
            return Check::fail(ID, found, "raise the destination's featureCompatibilityVersion to at least the source's (setFeatureCompatibilityVersion)");
        }
    }
    Check::pass(ID, found)
}
