//! Whether Ferry can block the source's writes at commit (a forgotten writer then fails loudly
//! instead of writing where nobody reads), and what it means when it cannot.

use mongodb::bson::{doc, Bson};
use mongodb::Client;

use crate::preflight::report::Check;
use crate::server_error;
use crate::source::info::{self, Version};

/// Why the source's writes will stay open at commit, if they will: `--no-block-writes`, or a
/// source version that cannot block them.
pub fn writes_open_at_commit(block_writes: bool, version: Version) -> Option<String> {
    if !block_writes {
        Some("--no-block-writes was given".into())
    } else if !version.blocks_user_writes() {
        Some(format!(
            "the source ({version}) cannot block writes: setUserWriteBlockMode needs MongoDB 6.0+"
        ))
    } else {
        None
    }
}

/// Whether Ferry can block the source's writes at commit (DESIGN: a forgotten writer fails
/// loudly instead of writing where nobody reads), and what it means when it cannot.
pub async fn write_blocking(source: &Client, block_writes: bool) -> Check {
    const ID: &str = "source.write-blocking";
    const STOP_WRITERS: &str = "stop every application writing to the source before committing: a write after the commit point is not applied, and is reported (strayWrites, exit code 4)";
    let version = info::source_version(source).await;
    if let Some(reason) = version.and_then(|v| writes_open_at_commit(block_writes, v)) {
        return Check::warn(
            ID,
            format!("the source's writes stay open at commit: {reason}"),
            STOP_WRITERS,
        );
    }
    // Without its required `global` field the command is refused before it runs: this asks
    // whether the server knows it, and changes nothing.
    let known = source
        .database("admin")
        .run_command(doc! { "setUserWriteBlockMode": 1 })
        .await
        .map_err(anyhow::Error::from);
    if let Err(e) = &known {
        if server_error::code_of(e) == Some(server_error::COMMAND_NOT_FOUND) {
            return Check::warn(
                ID,
                "the source does not support setUserWriteBlockMode, so its writes stay open at commit",
                STOP_WRITERS,
            );
        }
    }
    if may_block_writes(source).await == Some(false) {
        return Check::warn(
            ID,
            "the source user may not run setUserWriteBlockMode, so the source's writes stay open at commit",
            format!("grant the source user the restore role (or the setUserWriteBlockMode action on the cluster), or {STOP_WRITERS}"),
        );
    }
    Check::pass(
        ID,
        "Ferry blocks the source's writes before it takes the commit point (setUserWriteBlockMode); they stay blocked after COMMITTED. Users with bypassWriteBlockingMode (the restore and root roles) are not blocked, and index builds in progress on the source are aborted",
    )
}

/// Whether the source user holds the `setUserWriteBlockMode` action on the cluster; `None`
/// when the server does not say (authentication off, or no answer).
async fn may_block_writes(source: &Client) -> Option<bool> {
    let status = source
        .database("admin")
        .run_command(doc! { "connectionStatus": 1, "showPrivileges": true })
        .await
        .ok()?;
    let info = status.get_document("authInfo").ok()?;
    if info
        .get_array("authenticatedUsers")
        .map_or(true, |u| u.is_empty())
    {
        return None;
    }
    let privileges = info.get_array("authenticatedUserPrivileges").ok()?;
    Some(privileges.iter().filter_map(Bson::as_document).any(|p| {
        p.get_document("resource")
            .is_ok_and(|r| r.get_bool("cluster") == Ok(true))
            && p.get_array("actions").is_ok_and(|actions| {
                actions
                    .iter()
                    .any(|a| a.as_str() == Some("setUserWriteBlockMode"))
            })
    }))
}
