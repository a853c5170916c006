//! The parts of a namespace's spec that would break a replay while syncing, and their relaxed
//! form: unique and TTL indexes, capped limits, clustered expiry (DESIGN rule 4). The commit
//! restores them from the source's exact spec.

use mongodb::bson::{Bson, Document};

/// Whether collection (or view) options name a collation other than the simple one.
pub fn has_collation(options: &Document) -> bool {
    options
        .get_document("collation")
        .is_ok_and(|c| c.get_str("locale") != Ok("simple"))
}

/// The index spec to build while syncing: unique and TTL constraints removed, since a replay
/// passes through states that would break them. `None` when the spec needs no relaxing.
pub fn relax_index(spec: &Document) -> Option<Document> {
    let mut relaxed = spec.clone();
    let mut changed = false;
    if relaxed.get_bool("unique").unwrap_or(false) {
        relaxed.remove("unique");
        changed = true;
    }
    for key in ["expireAfterSeconds", "prepareUnique"] {
        changed |= relaxed.remove(key).is_some();
    }
    changed.then_some(relaxed)
}

/// Collection options without the ones that make the destination delete on its own: capped
/// limits (the destination would trim on its own schedule) and clustered-collection expiry.
pub fn relax_collection_options(options: &Document) -> Document {
    let mut relaxed = options.clone();
    if relaxed.get_bool("capped").unwrap_or(false) {
        for key in ["capped", "size", "max"] {
            relaxed.remove(key);
        }
    }
    relaxed.remove("expireAfterSeconds");
    relaxed
}

/// Options of a `collMod` event (or command) with the constraint changes taken out, for replay.
pub fn relax_coll_mod(description: &Document) -> Document {
    let mut relaxed = Document::new();
    for (key, value) in description {
        match key.as_str() {
            "expireAfterSeconds" | "cappedSize" | "cappedMax" => {}
            "index" => {
                if let Bson::Document(index) = value {
                    let mut index = index.clone();
                    for option in ["expireAfterSeconds", "unique", "prepareUnique"] {
                        index.remove(option);
                    }
                    if index.keys().any(|k| k != "name" && k != "keyPattern") {
                        relaxed.insert(key, Bson::Document(index));
                    }
                }
            }
            _ => {
                relaxed.insert(key, value.clone());
            }
        }
    }
    relaxed
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn unique_and_ttl_indexes_are_relaxed_and_others_kept() {
        let unique = doc! { "v": 2, "key": { "email": 1 }, "name": "email_1", "unique": true };
        assert_eq!(
            relax_index(&unique),
            Some(doc! { "v": 2, "key": { "email": 1 }, "name": "email_1" })
        );
        let ttl = doc! { "v": 2, "key": { "at": 1 }, "name": "at_1", "expireAfterSeconds": 60 };
        assert_eq!(
            relax_index(&ttl),
            Some(doc! { "v": 2, "key": { "at": 1 }, "name": "at_1" })
        );
        let plain = doc! { "v": 2, "key": { "a": 1 }, "name": "a_1", "sparse": true };
        assert_eq!(relax_index(&plain), None);
    }

    #[test]
    fn capped_limits_are_relaxed_and_other_options_kept() {
        let options = doc! { "capped": true, "size": 4096, "max": 10, "validator": { "a": { "$type": "int" } } };
        assert_eq!(
            relax_collection_options(&options),
            doc! { "validator": { "a": { "$type": "int" } } }
        );
    }

    #[test]
    fn coll_mod_keeps_what_is_safe_to_replay() {
        let change = doc! { "index": { "name": "at_1", "expireAfterSeconds": 5 } };
        assert_eq!(relax_coll_mod(&change), doc! {});
        let change = doc! { "index": { "name": "a_1", "hidden": true }, "validationLevel": "off" };
        assert_eq!(
            relax_coll_mod(&change),
            doc! { "index": { "name": "a_1", "hidden": true }, "validationLevel": "off" }
        );
    }
}
