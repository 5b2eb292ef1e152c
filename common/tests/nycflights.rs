//! Inference on real, messy data: ../shared/data/nycflights13 (see its README).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;

use relgraph_common::{Database, DatabaseSchema, ForeignKey};

fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nycflights13");
    assert!(
        dir.is_dir(),
        "nycflights13 not found at {} (shared/ beside the checkout)",
        dir.display()
    );
    dir
}

/// Reads a CSV or CSV.gz with the csv crate alone, as a reference independent of the loader.
fn read_column(file: &str, column: &str) -> Vec<String> {
    let path = data_dir().join(file);
    let mut bytes = Vec::new();
    let f = std::fs::File::open(&path).expect("open");
    if file.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(f)
            .read_to_end(&mut bytes)
            .expect("gunzip");
    } else {
        std::io::BufReader::new(f)
            .read_to_end(&mut bytes)
            .expect("read");
    }
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let at = reader
        .headers()
        .expect("header")
        .iter()
        .position(|h| h == column)
        .expect("column");
    reader
        .records()
        .map(|r| r.expect("record")[at].to_string())
        .collect()
}

fn links(schema: &DatabaseSchema, table: &str) -> HashSet<(String, String)> {
    let t = schema.table(table).expect("table");
    t.foreign_keys
        .iter()
        .map(|ForeignKey { column, references }| (column.clone(), references.clone()))
        .collect()
}

#[test]
fn nycflights_is_inferred_as_its_readme_says() {
    let db = Database::load(&data_dir(), None).expect("load nycflights13");
    let schema = db.schema();
    let key = |t: &str| schema.table(t).expect("table").primary_key.clone();
    let time = |t: &str| schema.table(t).expect("table").time_column.clone();
    assert_eq!(key("airports").as_deref(), Some("faa"));
    assert_eq!(key("planes").as_deref(), Some("tailnum"));
    assert_eq!(key("airlines").as_deref(), Some("carrier"));
    assert_eq!(key("flights"), None);
    assert_eq!(key("weather"), None);
    assert_eq!(time("flights").as_deref(), Some("time_hour"));
    assert_eq!(time("weather").as_deref(), Some("time_hour"));
    assert_eq!(time("airports"), None);
    let pair = |c: &str, t: &str| (c.to_string(), t.to_string());
    let expected: HashSet<_> = [
        pair("carrier", "airlines"),
        pair("tailnum", "planes"),
        pair("origin", "airports"),
        pair("dest", "airports"),
    ]
    .into();
    assert_eq!(links(&schema, "flights"), expected);
    assert_eq!(
        links(&schema, "weather"),
        [pair("origin", "airports")].into()
    );
    for t in ["airports", "planes", "airlines"] {
        assert!(links(&schema, t).is_empty(), "{t} should link nowhere");
    }
    assert_eq!(db.table("flights").expect("flights").num_rows(), 336_776);
    assert_eq!(
        db.skipped
            .iter()
            .filter_map(|p| p.file_name())
            .collect::<Vec<_>>(),
        ["README.md"]
    );
}

#[test]
fn dangling_counts_match_a_naive_count() {
    let db = Database::load(&data_dir(), None).expect("load nycflights13");
    let flights = db.table("flights").expect("flights");
    let mut expected = HashMap::new();
    for (fk, (file, key)) in [
        ("tailnum", ("planes.csv", "tailnum")),
        ("dest", ("airports.csv", "faa")),
    ] {
        let keys: HashSet<String> = read_column(file, key).into_iter().collect();
        let dangling = read_column("flights.csv.gz", fk)
            .iter()
            .filter(|v| !v.is_empty() && *v != "NA" && !keys.contains(*v))
            .count() as u64;
        expected.insert(fk.to_string(), dangling);
    }
    for (fk, count) in flights.schema.foreign_keys.iter().zip(&flights.dangling) {
        if let Some(want) = expected.get(&fk.column) {
            assert_eq!(count, want, "dangling {}", fk.column);
            assert!(*want > 0, "{} should dangle in nycflights13", fk.column);
        }
    }
    assert_eq!(expected.len(), 2);
}
