//! Documents found on one side only that a TTL index has expired: not differences, since both
//! servers' TTL monitors remove them on schedules of their own (`catalog::ttl`). Counting them
//! would refuse a commit for what both servers are about to do anyway; they are counted apart.

use std::collections::HashMap;

use anyhow::Result;
use mongodb::bson::RawDocumentBuf;

use super::compare::{mismatch, Sides};
use super::report::Mismatch;
use crate::catalog::ttl::{self, Ttl};
use crate::namespace::Namespace;

/// Tells which one-sided documents are expired, reading a namespace's TTL rules once, and the
/// servers' clocks when first needed after documents were read.
pub struct Expiry<'a> {
    sides: Sides<'a>,
    rules: HashMap<String, Ttl>,
    /// The later of the two servers' clocks, read after the documents being judged.
    now_ms: Option<i64>,
}

impl<'a> Expiry<'a> {
    pub fn new(sides: Sides<'a>) -> Self {
        Self {
            sides,
            rules: HashMap::new(),
            now_ms: None,
        }
    }

    /// Documents were read since the clocks were: read them again before the next judgment, so
    /// that a document that expired in between is judged by a clock that knows it.
    pub fn documents_read(&mut self) {
        self.now_ms = None;
    }

    /// The mismatch of a document found on one side of `ns` only: `kind` (`missing` or
    /// `extra`), or `expired` when a TTL index has expired it.
    pub async fn one_sided(
        &mut self,
        kind: &'static str,
        ns: &Namespace,
        document: &RawDocumentBuf,
    ) -> Result<Mismatch> {
        let key = ns.to_string();
        if !self.rules.contains_key(&key) {
            let rules = Ttl::of_namespace(self.sides.source, self.sides.destination, ns).await?;
            self.rules.insert(key.clone(), rules);
        }
        let rules = &self.rules[&key];
        if rules.is_empty() {
            return mismatch(kind, document, Vec::new());
        }
        let now_ms = match self.now_ms {
            Some(now) => now,
            None => *self
                .now_ms
                .insert(ttl::later_clock(self.sides.source, self.sides.destination).await?),
        };
        let (holder, _) = self.sides.side(kind == "missing");
        let collection = holder
            .database(&ns.db)
            .collection::<RawDocumentBuf>(&ns.coll);
        let kind = if rules.expired(&collection, document, now_ms).await? {
            "expired"
        } else {
            kind
        };
        mismatch(kind, document, Vec::new())
    }
}
