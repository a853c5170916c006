//! A collection's TTL rules, and whether a document is expired under them: what the servers' TTL
//! monitors delete on their own, on a schedule of their own. The source's keeps deleting after
//! the commit point when its writes cannot be blocked (before 6.0, or `--no-block-writes`), and
//! the destination's deletes on its own clock once its TTL indexes are restored, so at any
//! instant one side may still hold an expired document the other has just removed. That is no
//! difference and no stray write: both servers remove it.
//!
//! A document is expired under a TTL index (one field with `expireAfterSeconds`, or a clustered
//! collection's `expireAfterSeconds` on `_id`) when that field holds a date, or dates of which
//! the earliest is, older than `expireAfterSeconds` before now: the rule the monitors delete by.

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf};
use mongodb::{Client, Collection};

use super::{describe_one, CollectionSpec};
use crate::namespace::Namespace;
use crate::reply::number;

/// One TTL index: the field it reads, after how many milliseconds a date there expires, and, for
/// a partial index, the filter a document must match to expire.
#[derive(Clone, Debug, PartialEq)]
struct Rule {
    path: Vec<String>,
    after_ms: f64,
    partial: Option<Document>,
}

/// The TTL rules of one collection (none for most).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ttl {
    rules: Vec<Rule>,
}

impl Ttl {
    /// The rules of a collection as the server describes it.
    pub fn of(spec: &CollectionSpec) -> Self {
        let mut rules: Vec<Rule> = spec
            .indexes
            .iter()
            .filter_map(|index| {
                let seconds = number(index, "expireAfterSeconds")?;
                let key = index.get_document("key").ok()?;
                // The TTL monitor reads only single-field indexes.
                let (field, _) = key.iter().next().filter(|_| key.len() == 1)?;
                let partial = index.get_document("partialFilterExpression").ok().cloned();
                Some(Rule {
                    partial,
                    ..rule(field, seconds)
                })
            })
            .collect();
        if spec.options.contains_key("clusteredIndex") {
            if let Some(seconds) = number(&spec.options, "expireAfterSeconds") {
                rules.push(rule("_id", seconds));
            }
        }
        Self { rules }
    }

    /// The rules of `ns` on the source, or on the destination when the source no longer has it.
    pub async fn of_namespace(
        source: &Client,
        destination: &Client,
        ns: &Namespace,
    ) -> Result<Self> {
        let spec = match describe_one(source, &ns.db, &ns.coll).await? {
            Some(spec) => Some(spec),
            None => describe_one(destination, &ns.db, &ns.coll).await?,
        };
        Ok(spec.as_ref().map(Self::of).unwrap_or_default())
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a TTL monitor may delete `document`, held in `collection`, at `now_ms` (ms since
    /// the epoch): its date is past a rule's, and it matches that rule's partial filter, which
    /// the server holding it evaluates.
    pub async fn expired(
        &self,
        collection: &Collection<RawDocumentBuf>,
        document: &RawDocument,
        now_ms: i64,
    ) -> Result<bool> {
        for rule in self.due(document, now_ms) {
            let Some(filter) = &rule.partial else {
                return Ok(true);
            };
            let id: Bson = document
                .get("_id")?
                .context("a document without _id")?
                .to_raw_bson()
                .try_into()?;
            let matching = doc! { "$and": [{ "_id": id }, filter.clone()] };
            if collection.count_documents(matching).await? > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The rules whose date `document` is past at `now_ms`.
    fn due<'a>(
        &'a self,
        document: &'a RawDocument,
        now_ms: i64,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |rule| {
            let path: Vec<&str> = rule.path.iter().map(String::as_str).collect();
            earliest_date(RawBsonRef::Document(document), &path)
                .is_some_and(|date| (date as f64) + rule.after_ms < now_ms as f64)
        })
    }
}

/// The later of two servers' clocks (`hello.localTime`), in ms since the epoch: a document
/// expired by it may be gone from either.
pub async fn later_clock(a: &Client, b: &Client) -> Result<i64> {
    Ok(server_time(a).await?.max(server_time(b).await?))
}

async fn server_time(client: &Client) -> Result<i64> {
    let hello = crate::source::clock::hello(client)
        .await
        .context("reading a server's clock (hello) to tell expired documents")?;
    Ok(hello
        .get_datetime("localTime")
        .context("a hello reply without localTime")?
        .timestamp_millis())
}

fn rule(field: &str, seconds: f64) -> Rule {
    Rule {
        path: field.split('.').map(str::to_string).collect(),
        after_ms: seconds * 1000.0,
        partial: None,
    }
}

/// The earliest date at `path` in `value`, through arrays as an index reads them.
fn earliest_date(value: RawBsonRef<'_>, path: &[&str]) -> Option<i64> {
    match (value, path) {
        (RawBsonRef::DateTime(date), []) => Some(date.timestamp_millis()),
        (RawBsonRef::Array(items), _) => items
            .into_iter()
            .filter_map(|item| earliest_date(item.ok()?, path))
            .min(),
        (RawBsonRef::Document(document), [first, rest @ ..]) => {
            earliest_date(document.get(first).ok()??, rest)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{rawdoc, DateTime};

    const NOW: i64 = 1_800_000_000_000;

    fn at(ms_before_now: i64) -> DateTime {
        DateTime::from_millis(NOW - ms_before_now)
    }

    fn ttl(indexes: Vec<Document>, options: Document) -> Ttl {
        Ttl::of(&CollectionSpec::shaped(options, indexes))
    }

    fn rules(rules: &[(&str, f64)]) -> Ttl {
        Ttl {
            rules: rules.iter().map(|(f, s)| rule(f, *s)).collect(),
        }
    }

    #[test]
    fn ttl_rules_are_single_field_indexes_and_clustered_expiry() {
        let indexes = vec![
            doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
            doc! { "v": 2, "key": { "at": 1 }, "name": "at_1", "expireAfterSeconds": 60 },
            doc! { "v": 2, "key": { "a.b": -1 }, "name": "ab", "expireAfterSeconds": 1.5 },
            // Not a TTL index to the server: compound.
            doc! { "v": 2, "key": { "x": 1, "y": 1 }, "name": "xy", "expireAfterSeconds": 5 },
        ];
        let clustered = doc! { "clusteredIndex": { "key": { "_id": 1 }, "unique": true }, "expireAfterSeconds": 10_i64 };
        assert_eq!(
            ttl(indexes, clustered),
            rules(&[("at", 60.0), ("a.b", 1.5), ("_id", 10.0)])
        );
        // A partial TTL index expires only what its filter matches.
        let partial = doc! { "v": 2, "key": { "at": 1 }, "name": "at_1", "expireAfterSeconds": 60, "partialFilterExpression": { "kind": "temp" } };
        assert_eq!(
            ttl(vec![partial], doc! {}).rules[0].partial,
            Some(doc! { "kind": "temp" })
        );
        assert!(ttl(Vec::new(), doc! { "expireAfterSeconds": 10 }).is_empty());
    }

    #[test]
    fn a_document_is_expired_by_its_earliest_date_past_the_rule() {
        let ttl = rules(&[("at", 60.0)]);
        let expired = |document: &RawDocument| ttl.due(document, NOW).count() > 0;
        assert!(expired(&rawdoc! { "_id": 1, "at": at(61_000) }));
        assert!(!expired(&rawdoc! { "_id": 1, "at": at(59_000) }));
        // The earliest date of an array; other values never expire.
        assert!(expired(
            &rawdoc! { "_id": 1, "at": [at(0), "x", at(120_000)] }
        ));
        assert!(!expired(&rawdoc! { "_id": 1, "at": [at(0), 5] }));
        assert!(!expired(&rawdoc! { "_id": 1, "at": "2020-01-01" }));
        assert!(!expired(&rawdoc! { "_id": 1 }));
        // Dotted paths, through arrays of documents.
        let nested = rules(&[("a.b", 1.0)]);
        let document = rawdoc! { "_id": 1, "a": [{ "b": at(0) }, { "b": at(5_000) }] };
        assert_eq!(nested.due(&document, NOW).count(), 1);
        let document = rawdoc! { "_id": 1, "a": { "b": at(0) } };
        assert_eq!(nested.due(&document, NOW).count(), 0);
    }
}
