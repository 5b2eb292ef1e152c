//! The partition store on real data (nycflights13): every row lands in exactly one
//! partition, facts live with the row their first foreign key points to (through chains),
//! and what was ingested reads back after the store is closed and opened again.

use std::collections::HashMap;
use std::path::PathBuf;

use arrow::array::{Array, StringArray};
use relgraph_common::{Database, NO_ROW};
use relgraph_worker::store::{PartitionStore, placement};

fn nycflights() -> Database {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nycflights13");
    Database::load(&dir, None).expect("nycflights13 loads")
}

#[test]
fn facts_live_with_their_parents_and_every_row_is_stored_once() {
    let db = nycflights();
    let parts = 12;
    let placed = placement(&db, parts);
    // Co-location: a fact row's partition is its first foreign key's row's partition.
    for (t, table) in db.tables.iter().enumerate() {
        let (Some(fk), Some(_)) = (table.schema.foreign_keys.first(), &table.schema.time_column)
        else {
            continue;
        };
        let parent = db
            .tables
            .iter()
            .position(|p| p.name() == fk.references)
            .expect("parent");
        let column = table.schema.column_index(&fk.column).expect("fk column");
        let rows = db.parent_rows(t, column, parent);
        let mut checked = 0;
        for (r, &p) in rows.iter().enumerate() {
            if p != NO_ROW {
                assert_eq!(
                    placed[t][r],
                    placed[parent][p as usize],
                    "{} row {r}",
                    table.name()
                );
                checked += 1;
            }
        }
        assert!(checked > 0, "{}: no linked row checked", table.name());
    }
    // Three stores, partitions round-robin; read back after reopening.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stored: HashMap<String, u64> = HashMap::new();
    for w in 0..3u32 {
        let owned: Vec<u32> = (0..parts).filter(|p| p % 3 == w).collect();
        let path = dir.path().join(format!("w{w}"));
        let ingested = PartitionStore::open(&path)
            .expect("open")
            .ingest(&db, &owned, parts);
        let ingested = ingested.expect("ingest");
        let store = PartitionStore::open(&path).expect("reopen");
        let schema = store.schema().expect("schema").expect("stored schema");
        assert_eq!(schema.tables.len(), db.tables.len());
        for (name, rows) in &ingested.rows {
            let back = store
                .rows(name)
                .expect("rows")
                .map_or(0, |b| b.num_rows() as u64);
            assert_eq!(back, *rows, "{name} in store {w}");
            let counted: u64 = owned
                .iter()
                .map(|&p| store.count(name, p).expect("count"))
                .sum();
            assert_eq!(counted, *rows, "{name} counts in store {w}");
            *stored.entry(name.clone()).or_default() += rows;
        }
    }
    for t in &db.tables {
        assert_eq!(
            stored[t.name()],
            t.num_rows() as u64,
            "{}: rows lost or doubled",
            t.name()
        );
    }
    // Each stored row knows its row in the table: across the stores, every row once,
    // each with the table's values there.
    let flights = db.table("flights").expect("flights");
    let mut seen = vec![false; flights.num_rows()];
    for w in 0..3 {
        let store = PartitionStore::open(&dir.path().join(format!("w{w}"))).expect("open");
        let (ids, rows) = store
            .rows_with_ids("flights")
            .expect("rows")
            .expect("flights stored");
        assert_eq!(ids.len(), rows.num_rows());
        let want = arrow::compute::take_record_batch(
            &flights.batch,
            &arrow::array::UInt32Array::from(ids.clone()),
        )
        .expect("take");
        assert_eq!(rows, want, "store {w}");
        for id in ids {
            assert!(!seen[id as usize], "flight row {id} stored twice");
            seen[id as usize] = true;
        }
    }
    assert!(seen.iter().all(|&s| s), "a flight row was not stored");
    // Keys of an entity table come back exactly once across the stores.
    let mut tailnums = Vec::new();
    for w in 0..3 {
        let store = PartitionStore::open(&dir.path().join(format!("w{w}"))).expect("open");
        let planes = store.rows("planes").expect("rows").expect("planes stored");
        let col = planes
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("tailnum");
        tailnums.extend((0..col.len()).map(|i| col.value(i).to_string()));
    }
    let n = tailnums.len();
    tailnums.sort();
    tailnums.dedup();
    assert_eq!(tailnums.len(), n);
    assert_eq!(n, db.table("planes").expect("planes").num_rows());
}

#[test]
fn appended_events_replay_in_order_after_reopening() {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    let dir = tempfile::tempdir().expect("tempdir");
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let batch = |v: Vec<i64>| {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).expect("batch")
    };
    {
        let store = PartitionStore::open(dir.path()).expect("open");
        assert!(store.events().expect("events").is_empty());
        // Sequence numbers past 255 check that keys sort as numbers, not bytes.
        for (seq, table, id) in [
            (1u64, "orders", Some("put-a/0")),
            (2, "sessions", None),
            (300, "orders", Some("put-b/0")),
        ] {
            store
                .append_event(seq, table, &batch(vec![seq as i64, -(seq as i64)]), id)
                .expect("append");
        }
    }
    let store = PartitionStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store.append_ids().expect("ids"),
        vec![("put-a/0".to_string(), 1), ("put-b/0".to_string(), 300)]
    );
    let events = store.events().expect("events");
    let got: Vec<(u64, &str, Vec<i64>)> = events
        .iter()
        .map(|(seq, t, b)| {
            let n = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64");
            (*seq, t.as_str(), n.values().to_vec())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "orders", vec![1, -1]),
            (2, "sessions", vec![2, -2]),
            (300, "orders", vec![300, -300]),
        ]
    );
}

/// A store knows which partitions it wholly holds; removing some and ingesting others
/// leaves exactly the rows of the partitions held (what a job's new attempt does with
/// the partitions an earlier attempt left on a surviving worker).
#[test]
fn partitions_are_held_removed_and_added() {
    let db = nycflights();
    let parts = 4;
    let placed = placement(&db, parts);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PartitionStore::open(dir.path()).expect("open");
    store.ingest(&db, &[0, 2], parts).expect("ingest");
    assert_eq!(store.held(parts).expect("held"), vec![0, 2]);
    assert!(
        store.held(8).expect("held").is_empty(),
        "another partition count"
    );
    // Neighbor lists go with their partition: marked linked, removed with it.
    let lists = |p: u32| vec![vec![p as u8; 3], vec![p as u8 + 10]];
    for p in [0, 2] {
        store.put_adjacency(parts, p, &lists(p)).expect("adjacency");
    }
    store.sync().expect("sync");
    assert_eq!(store.linked(parts).expect("linked"), vec![0, 2]);
    assert_eq!(store.adjacency(2, 1).expect("read"), Some(vec![12]));
    let names: Vec<&str> = db.tables.iter().map(|t| t.name()).collect();
    store.remove(&names, &[2], parts).expect("remove");
    assert_eq!(store.linked(parts).expect("linked"), vec![0]);
    assert_eq!(store.adjacency(2, 0).expect("read"), None);
    assert_eq!(store.adjacency(0, 0).expect("read"), Some(vec![0; 3]));
    store.ingest(&db, &[1], parts).expect("ingest");
    store.put_derived("meta", b"{}").expect("derived");
    drop(store);
    let store = PartitionStore::open(dir.path()).expect("reopen");
    assert_eq!(store.held(parts).expect("held"), vec![0, 1]);
    assert_eq!(
        store.derived("meta").expect("derived"),
        Some(b"{}".to_vec())
    );
    assert_eq!(store.derived("labels").expect("derived"), None);
    // Rows of some partitions only: those, in the order asked.
    for (t, table) in db.tables.iter().enumerate() {
        let ids = store
            .rows_with_ids_in(table.name(), &[1])
            .expect("rows")
            .map(|(ids, batch)| {
                assert_eq!(ids.len(), batch.num_rows());
                ids
            })
            .unwrap_or_default();
        assert!(
            ids.iter().all(|&r| placed[t][r as usize] == 1),
            "{}",
            table.name()
        );
        assert_eq!(
            ids.len() as u64,
            store.count(table.name(), 1).expect("count")
        );
    }
    for (t, table) in db.tables.iter().enumerate() {
        let mut ids = store
            .rows_with_ids(table.name())
            .expect("rows")
            .map(|(ids, _)| ids)
            .unwrap_or_default();
        ids.sort_unstable();
        let want: Vec<u32> = (0..table.num_rows() as u32)
            .filter(|&r| placed[t][r as usize] <= 1)
            .collect();
        assert_eq!(ids, want, "{}", table.name());
        assert_eq!(store.count(table.name(), 2).expect("count"), 0);
    }
}
