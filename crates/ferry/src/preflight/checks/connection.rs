//! Whether each end answers, and is what Ferry needs: a failed connection explained (network,
//! TLS, credentials), and the source reached through its replica set's primary.

use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::Client;

use crate::explain;
use crate::plan::Endpoint;
use crate::preflight::report::Check;
use crate::redact::redact_uri;

/// Why a connection failed, and what to do, from the driver's error.
pub fn connection_failure(endpoint: &Endpoint, error: &mongodb::error::Error) -> (String, String) {
    let role = endpoint.role;
    if let ErrorKind::Authentication { message, .. } = error.kind.as_ref() {
        let (user, auth_source) = endpoint.user();
        return (
            redact_uri(&format!(
                "authentication failed for user {user} on authSource {auth_source} at {}: {}",
                endpoint.hosts(),
                explain::clean(message)
            )),
            format!("check the user name, password, authSource and authMechanism in --{role}; the user must exist on that cluster"),
        );
    }
    let said = redact_uri(&explain::driver_error(error));
    if said.contains("TLS") {
        return (
            said,
            format!("check that the server speaks TLS and that tlsCAFile in --{role} names the CA that signed its certificate"),
        );
    }
    (
        said,
        format!("check the host and port in --{role}, that the server runs, and that this machine may reach it"),
    )
}

/// `hello` on one end: the reply, or the failed check.
pub async fn reachable(
    id: &'static str,
    endpoint: &Endpoint,
    client: &Client,
) -> Result<Document, Check> {
    match client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
    {
        Ok(hello) => Ok(hello),
        Err(e) => {
            let (found, fix) = connection_failure(endpoint, &e);
            Err(Check::fail(id, found, fix))
        }
    }
}

/// The source must be a replica set member reached through its primary: Ferry follows the
/// change stream and takes the commit point there, where the writes happen. A connection held to
/// a secondary (`directConnection=true`) would measure a lagging node's time.
pub fn source_replica_set(hello: &Document, at: &str) -> Check {
    const ID: &str = "source.replica-set";
    let Ok(set) = hello.get_str("setName") else {
        return Check::fail(
            ID,
            format!("the source at {at} is a standalone server, not a replica set member"),
            "Ferry follows the source's change stream, which needs a replica set: restart the server as a single-node replica set (--replSet) and run rs.initiate()",
        );
    };
    if !hello.get_bool("isWritablePrimary").unwrap_or(false) {
        return Check::fail(
            ID,
            format!(
                "the source connection {at} reaches {}, a member of replica set {set} that is not its primary",
                hello.get_str("me").unwrap_or("a node")
            ),
            format!("Ferry reads the change stream and the commit point from the primary: connect with replicaSet={set} and the members' hosts, without directConnection=true to a secondary"),
        );
    }
    Check::pass(ID, format!("replica set {set}, through its primary"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    #[test]
    fn the_source_must_be_reached_through_its_primary() {
        let primary = doc! { "setName": "rs0", "isWritablePrimary": true, "me": "a:1" };
        assert_eq!(source_replica_set(&primary, "a:1").status, Status::Pass);
        let secondary =
            doc! { "setName": "rs0", "isWritablePrimary": false, "secondary": true, "me": "b:1" };
        let check = source_replica_set(&secondary, "b:1");
        assert_eq!(check.status, Status::Fail);
        assert!(check.found.contains("not its primary"), "{}", check.found);
        assert!(check.fix.unwrap().contains("replicaSet=rs0"));
        let standalone = doc! { "isWritablePrimary": true };
        assert_eq!(source_replica_set(&standalone, "c:1").status, Status::Fail);
    }
}
