//! One reader of a collection in `_id` order, shared by the copy and the verifier so that both
//! see documents alike: the simple collation (so the order and the range filters agree with
//! `id_order` whatever the collection's default collation; a collated collection's reads then
//! sort without its `_id` index, hence disk use is allowed), majority read concern, and a
//! session whose reads see at least a given source time (`source::reads`).

use anyhow::Result;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::options::{Collation, CollectionOptions, ReadConcern};
use mongodb::{Client, ClientSession, SessionCursor};

/// Documents per batch the server returns.
pub const BATCH: u32 = 1000;

/// The order documents come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// By `_id`, as MongoDB sorts across types.
    Id,
    /// As stored: a capped collection's insertion order is part of its content.
    Natural,
}

/// What to read.
pub struct Scan<'a> {
    pub db: &'a str,
    pub coll: &'a str,
    pub filter: Document,
    pub order: Order,
    pub limit: Option<i64>,
}

/// An open read, in its session.
pub struct Rows<'s> {
    session: &'s mut ClientSession,
    cursor: SessionCursor<RawDocumentBuf>,
}

impl Rows<'_> {
    /// The next document, `None` at the end.
    pub async fn next(&mut self) -> Result<Option<RawDocumentBuf>> {
        Ok(self.cursor.next(self.session).await.transpose()?)
    }

    /// The read's session, for a catalog lookup whose answer later reads must see.
    pub fn session(&mut self) -> &mut ClientSession {
        self.session
    }
}

/// Opens a read of `scan` on `client` in `session`.
pub async fn open<'s>(
    client: &Client,
    session: &'s mut ClientSession,
    scan: Scan<'_>,
) -> Result<Rows<'s>> {
    let collection = client
        .database(scan.db)
        .collection_with_options::<RawDocumentBuf>(
            scan.coll,
            CollectionOptions::builder()
                .read_concern(ReadConcern::majority())
                .build(),
        );
    let mut find = collection
        .find(scan.filter)
        .batch_size(BATCH)
        .collation(Collation::builder().locale("simple").build())
        .allow_disk_use(true);
    if scan.order == Order::Id {
        find = find.sort(doc! { "_id": 1 });
    }
    if let Some(limit) = scan.limit {
        find = find.limit(limit);
    }
    let cursor = find.session(&mut *session).await?;
    Ok(Rows { session, cursor })
}
