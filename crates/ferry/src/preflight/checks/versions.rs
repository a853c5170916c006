//! The supported version pairs and featureCompatibilityVersions.

use mongodb::Client;

use crate::preflight::report::Check;
use crate::source::info::{self, build_version, fcv, Version};

/// The oldest source Ferry reads: the driver's minimum (4.4), with `hello` (4.4.2).
const OLDEST_SOURCE: Version = Version::new(4, 4, 2);

/// The supported version matrix: source 4.4.2 or newer (before 6.0 without expanded change
/// events, which the pre-flight warns about), destination not older than the source, and a destination featureCompatibilityVersion not below the
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
    if s < OLDEST_SOURCE {
        return Check::fail(ID, found, "upgrade the source in place to MongoDB 4.4.2 or newer first (a rolling upgrade, member by member): the driver Ferry uses reads servers from 4.4 on, and Ferry asks `hello`, which 4.4 answers from 4.4.2");
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
    if !s.expanded_events() {
        return Check::warn(
            ID,
            format!("{found}: before 6.0 the change stream reports no catalog changes but drops, renames and dropDatabase, so Ferry reconciles the catalog instead (collections' options, indexes, validators and views every few seconds while syncing, exactly at commit); a rename copies its target again"),
            "expect catalog changes on the destination a few seconds after the source's, and a commit that may copy renamed or re-created collections again; upgrading the source to 6.0+ avoids both",
        );
    }
    Check::pass(ID, found)
}
