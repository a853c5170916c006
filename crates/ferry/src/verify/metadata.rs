//! Compares what describes a namespace on both sides: whether it exists, its kind, its
//! collection options (or view definition), and its indexes spec by spec.

use mongodb::bson::{Bson, Document};

use crate::catalog::{CollectionSpec, Kind};

/// A spec with its top-level fields sorted: their order carries no meaning (nested order does,
/// as in index keys and pipelines).
fn normalized(spec: &Document) -> Document {
    let mut fields: Vec<(String, Bson)> = spec.clone().into_iter().collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.into_iter().collect()
}

/// The differences between a namespace's description on the source and on the destination.
pub fn differences(
    source: Option<&CollectionSpec>,
    destination: Option<&CollectionSpec>,
) -> Vec<String> {
    let (source, destination) = match (source, destination) {
        (Some(s), Some(d)) => (s, d),
        (Some(s), None) => {
            return vec![format!(
                "the {} is missing on the destination",
                kind(s.kind)
            )]
        }
        (None, Some(d)) => {
            return vec![format!(
                "the {} exists only on the destination",
                kind(d.kind)
            )]
        }
        (None, None) => return Vec::new(),
    };
    let mut found = Vec::new();
    if source.kind != destination.kind {
        found.push(format!(
            "a {} on the source but a {} on the destination",
            kind(source.kind),
            kind(destination.kind)
        ));
        return found;
    }
    let (a, b) = (
        normalized(&source.options),
        normalized(&destination.options),
    );
    for (key, value) in &a {
        match b.get(key) {
            None => found.push(format!(
                "option {key} is missing on the destination (source: {value})"
            )),
            Some(other) if other != value => found.push(format!(
                "option {key} differs: source {value}, destination {other}"
            )),
            _ => {}
        }
    }
    for (key, value) in &b {
        if !a.contains_key(key) {
            found.push(format!(
                "option {key} exists only on the destination ({value})"
            ));
        }
    }
    let name = |spec: &Document| spec.get_str("name").unwrap_or_default().to_string();
    for index in &source.indexes {
        match destination.indexes.iter().find(|i| name(i) == name(index)) {
            None => found.push(format!(
                "index {} is missing on the destination: {index}",
                name(index)
            )),
            Some(other) if normalized(other) != normalized(index) => found.push(format!(
                "index {} differs: source {}, destination {}",
                name(index),
                normalized(index),
                normalized(other)
            )),
            _ => {}
        }
    }
    for index in &destination.indexes {
        if !source.indexes.iter().any(|i| name(i) == name(index)) {
            found.push(format!(
                "index {} exists only on the destination: {index}",
                name(index)
            ));
        }
    }
    found
}

fn kind(kind: Kind) -> &'static str {
    match kind {
        Kind::Collection => "collection",
        Kind::View => "view",
        Kind::Timeseries => "time-series collection",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn spec(options: Document, indexes: Vec<Document>) -> CollectionSpec {
        CollectionSpec::shaped(options, indexes)
    }

    #[test]
    fn finds_option_and_index_differences_and_ignores_field_order() {
        let a = spec(
            doc! { "validator": { "a": 1 }, "validationLevel": "strict" },
            vec![doc! { "v": 2, "key": { "x": 1 }, "name": "x_1", "unique": true }],
        );
        let same = spec(
            doc! { "validationLevel": "strict", "validator": { "a": 1 } },
            vec![doc! { "name": "x_1", "v": 2, "unique": true, "key": { "x": 1 } }],
        );
        assert!(differences(Some(&a), Some(&same)).is_empty());
        let other = spec(
            doc! { "validator": { "a": 2 }, "validationLevel": "strict" },
            vec![doc! { "v": 2, "key": { "x": 1 }, "name": "x_1" }],
        );
        let found = differences(Some(&a), Some(&other));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("option validator differs"),
            "{found:?}"
        );
        assert!(found[1].starts_with("index x_1 differs"), "{found:?}");
        assert_eq!(
            differences(Some(&a), None),
            ["the collection is missing on the destination"]
        );
    }
}
