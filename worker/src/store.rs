//! A worker's partitions of a database, in RocksDB (ARCHITECTURE.md §2-3).
//!
//! Placement: rows of fact tables (a time column and a foreign key) go with the row their
//! first foreign key points to (an order lives with its customer), so a seed's labels and
//! first hops are local; rows of other tables go to the partition of a hash of their
//! primary key; rows with neither (no key, a null first foreign key) go by a hash of
//! their position.
//!
//! Layout: `s/schema` holds the database schema (protobuf); `r/<table>/<partition>/<chunk>`
//! holds up to [`CHUNK_ROWS`] rows as one Arrow IPC stream (columnar, at the columns'
//! natural widths), `g/<table>/<partition>/<chunk>` the rows' positions in the ingested
//! table (u32, little-endian); `n/<table>/<partition>` the partition's row count;
//! `a/<partition>/<edge type>` the neighbor lists of the partition's nodes of one edge type
//! (a `relgraph_sampler::Segment`, by number in the job's graph); `p/<count>/<partition>`
//! marks a partition's rows stored and `q/<count>/<partition>` its neighbor lists; `d/<name>`
//! holds what a job derived from all rows (encoders, labels, ...). Writes go through
//! the WAL and a table's last write is synced, so an acknowledged ingest survives
//! `kill -9`.

use std::io::Cursor;
use std::path::Path;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use prost::Message as _;
use rayon::prelude::*;
use relgraph_common::Database;
use relgraph_common::hash::{FNV_BASIS, fnv1a, mix};
use relgraph_common::schema::DatabaseSchema;
use relgraph_proto::v1 as pb;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

/// Rows per stored chunk.
pub const CHUNK_ROWS: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("partition store {path}: {source}")]
    Rocks {
        path: String,
        source: rocksdb::Error,
    },
    #[error("partition store {path}: {what}: {detail}")]
    Data {
        path: String,
        what: String,
        detail: String,
    },
}

/// The hash of a key value as text (so an int64 key and a string foreign key holding
/// the same digits land together); `None` for a null.
fn key_hash(column: &ArrayRef, row: usize) -> Option<u64> {
    if column.is_null(row) {
        return None;
    }
    let mut buf = itoa::Buffer::new();
    let text: &[u8] = if let Some(a) = column.as_any().downcast_ref::<Int64Array>() {
        buf.format(a.value(row)).as_bytes()
    } else if let Some(a) = column.as_any().downcast_ref::<StringArray>() {
        a.value(row).as_bytes()
    } else {
        return Some(mix(row as u64));
    };
    Some(fnv1a(text.iter().copied(), FNV_BASIS))
}

/// A table of events that belong to another row: it has a time column and a foreign key.
fn is_fact(t: &relgraph_common::Table) -> bool {
    t.schema.time_column.is_some() && !t.schema.foreign_keys.is_empty()
}

/// Per table, the rows of each of `parts` partitions, in row order, from each row's
/// partition (`placement`).
pub fn rows_by_partition(placement: &[Vec<u32>], parts: u32) -> Vec<Vec<Vec<u32>>> {
    placement
        .par_iter()
        .map(|places| {
            let mut by = vec![Vec::new(); parts.max(1) as usize];
            for (r, &p) in places.iter().enumerate() {
                by[p as usize].push(r as u32);
            }
            by
        })
        .collect()
}

/// The partition (of `parts`) of every row of every table. A fact row takes the
/// partition of the row its first foreign key points to, through chains of facts (an
/// order event lives with its order, which lives with its customer).
pub fn placement(db: &Database, parts: u32) -> Vec<Vec<u32>> {
    let parts = u64::from(parts.max(1));
    let own = |t: &relgraph_common::Table, r: usize, column: Option<&str>| {
        let h = column
            .and_then(|c| t.column(c))
            .and_then(|k| key_hash(k, r))
            .unwrap_or_else(|| mix(r as u64 ^ 0x5bd1_e995));
        (h % parts) as u32
    };
    let mut out: Vec<Option<Vec<u32>>> = vec![None; db.tables.len()];
    // Entities first, then facts whose parent is placed, until nothing moves.
    loop {
        let mut moved = false;
        for (i, t) in db.tables.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            if !is_fact(t) {
                let key = t.schema.primary_key.as_deref();
                out[i] = Some((0..t.num_rows()).map(|r| own(t, r, key)).collect());
                moved = true;
                continue;
            }
            let fk = &t.schema.foreign_keys[0];
            let Some(parent) = db.tables.iter().position(|p| p.name() == fk.references) else {
                continue;
            };
            let (Some(parent_parts), Some(column)) =
                (out[parent].as_ref(), t.schema.column_index(&fk.column))
            else {
                continue;
            };
            let rows = db.parent_rows(i, column, parent);
            let placed = rows
                .iter()
                .enumerate()
                .map(|(r, &p)| match p {
                    relgraph_common::database::NO_ROW => own(t, r, None),
                    p => parent_parts[p as usize],
                })
                .collect();
            out[i] = Some(placed);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    // What is left sits in a cycle of facts: by the hash of its first key's value.
    db.tables
        .iter()
        .zip(out)
        .map(|(t, placed)| {
            placed.unwrap_or_else(|| {
                let fk = t.schema.foreign_keys.first().map(|f| f.column.as_str());
                (0..t.num_rows()).map(|r| own(t, r, fk)).collect()
            })
        })
        .collect()
}

/// What an ingest wrote.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Ingested {
    /// Per table (database order): rows written.
    pub rows: Vec<(String, u64)>,
    pub bytes: u64,
}

pub struct PartitionStore {
    db: DB,
    path: String,
}

impl std::fmt::Debug for PartitionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionStore")
            .field("path", &self.path)
            .finish()
    }
}

fn rows_key(table: &str, part: u32, chunk: u32) -> Vec<u8> {
    chunk_key("r", table, part, chunk)
}

fn ids_key(table: &str, part: u32, chunk: u32) -> Vec<u8> {
    chunk_key("g", table, part, chunk)
}

fn chunk_key(kind: &str, table: &str, part: u32, chunk: u32) -> Vec<u8> {
    let mut k = format!("{kind}/{table}/").into_bytes();
    k.extend_from_slice(&part.to_be_bytes());
    k.push(b'/');
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

/// Marks partition `part` of `parts` as wholly ingested.
fn held_key(parts: u32, part: u32) -> Vec<u8> {
    mark_key(b"p/", parts, part)
}

/// Marks partition `part` of `parts` as holding its neighbor lists.
fn linked_key(parts: u32, part: u32) -> Vec<u8> {
    mark_key(b"q/", parts, part)
}

fn adjacency_key(part: u32, edge: u32) -> Vec<u8> {
    let mut k = b"a/".to_vec();
    k.extend_from_slice(&part.to_be_bytes());
    k.push(b'/');
    k.extend_from_slice(&edge.to_be_bytes());
    k
}

fn derived_key(name: &str) -> Vec<u8> {
    format!("d/{name}").into_bytes()
}

fn mark_key(kind: &[u8], parts: u32, part: u32) -> Vec<u8> {
    let mut k = kind.to_vec();
    k.extend_from_slice(&parts.to_be_bytes());
    k.push(b'/');
    k.extend_from_slice(&part.to_be_bytes());
    k
}

fn count_key(table: &str, part: u32) -> Vec<u8> {
    let mut k = format!("n/{table}/").into_bytes();
    k.extend_from_slice(&part.to_be_bytes());
    k
}

impl PartitionStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Reads are bulk and once (a job's part read back, the event log replayed): a
        // block cache would only hold memory while a worker trains.
        let mut tables = rocksdb::BlockBasedOptions::default();
        tables.disable_cache();
        options.set_block_based_table_factory(&tables);
        let db = DB::open(&options, dir).map_err(|source| StoreError::Rocks {
            path: path.clone(),
            source,
        })?;
        Ok(PartitionStore { db, path })
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    fn data(&self, what: impl Into<String>, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Data {
            path: self.path.clone(),
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    /// Writes the rows of `db` that fall in the partitions `owned` (of `parts`),
    /// replacing what those partitions held.
    pub fn ingest(&self, db: &Database, owned: &[u32], parts: u32) -> Result<Ingested, StoreError> {
        self.ingest_placed(db, &placement(db, parts), owned, parts)
    }

    /// [`PartitionStore::ingest`] with the rows' partitions already known
    /// (`placement(db, parts)`).
    pub fn ingest_placed(
        &self,
        db: &Database,
        placement: &[Vec<u32>],
        owned: &[u32],
        parts: u32,
    ) -> Result<Ingested, StoreError> {
        let schema = db.schema();
        let mut out = Ingested::default();
        let plain = WriteOptions::default();
        self.db
            .put_opt(
                b"s/schema",
                pb::DatabaseSchema::from(&schema).encode_to_vec(),
                &plain,
            )
            .map_err(|e| self.rocks(e))?;
        // Rows of each table by partition (one pass), then (table, partition) pieces
        // encoded and written in parallel.
        let buckets = rows_by_partition(placement, parts);
        let pieces: Vec<(usize, u32)> = (0..db.tables.len())
            .flat_map(|t| owned.iter().map(move |&p| (t, p)))
            .collect();
        let written = pieces
            .par_iter()
            .map(|&(t, p)| {
                let (table, name) = (&db.tables[t], db.tables[t].name());
                let rows = buckets[t].get(p as usize).map_or(&[][..], Vec::as_slice);
                let mut batch = WriteBatch::default();
                batch.delete_range(rows_key(name, p, 0), rows_key(name, p, u32::MAX));
                batch.delete_range(ids_key(name, p, 0), ids_key(name, p, u32::MAX));
                let mut bytes = 0u64;
                for (c, chunk) in rows.chunks(CHUNK_ROWS).enumerate() {
                    let part = take_record_batch(&table.batch, &UInt32Array::from(chunk.to_vec()))
                        .map_err(|e| self.data(format!("table {name}"), e))?;
                    let encoded =
                        encode(&part).map_err(|e| self.data(format!("table {name}"), e))?;
                    bytes += encoded.len() as u64;
                    batch.put(rows_key(name, p, c as u32), encoded);
                    let ids: Vec<u8> = chunk.iter().flat_map(|r| r.to_le_bytes()).collect();
                    batch.put(ids_key(name, p, c as u32), ids);
                }
                batch.put(count_key(name, p), (rows.len() as u64).to_le_bytes());
                self.db
                    .write_opt(batch, &plain)
                    .map_err(|e| self.rocks(e))?;
                Ok((t, rows.len() as u64, bytes))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.rows = db
            .tables
            .iter()
            .map(|t| (t.name().to_string(), 0))
            .collect();
        for (t, rows, bytes) in written {
            out.rows[t].1 += rows;
            out.bytes += bytes;
        }
        // Each partition is marked held once every table's piece of it is written.
        let mut marks = WriteBatch::default();
        for &p in owned {
            marks.put(held_key(parts, p), []);
        }
        self.db
            .write_opt(marks, &plain)
            .map_err(|e| self.rocks(e))?;
        self.db.flush_wal(true).map_err(|e| self.rocks(e))?;
        Ok(out)
    }

    /// The partitions (of `parts`) wholly ingested here.
    pub fn held(&self, parts: u32) -> Result<Vec<u32>, StoreError> {
        self.marked(&held_key(parts, 0))
    }

    /// The partitions (of `parts`) whose neighbor lists are stored here.
    pub fn linked(&self, parts: u32) -> Result<Vec<u32>, StoreError> {
        self.marked(&linked_key(parts, 0))
    }

    /// Writes the neighbor lists of partition `part` of `parts`, one encoded segment per
    /// edge type, and marks it linked (durable once synced).
    pub fn put_adjacency(
        &self,
        parts: u32,
        part: u32,
        segments: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_range(adjacency_key(part, 0), adjacency_key(part, u32::MAX));
        for (e, bytes) in segments.iter().enumerate() {
            batch.put(adjacency_key(part, e as u32), bytes);
        }
        batch.put(linked_key(parts, part), []);
        self.db
            .write_opt(batch, &WriteOptions::default())
            .map_err(|e| self.rocks(e))
    }

    /// Syncs the write-ahead log: what was written before survives `kill -9`.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(|e| self.rocks(e))
    }

    /// Partition `part`'s neighbor lists of edge type `edge`, as written.
    pub fn adjacency(&self, part: u32, edge: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get(adjacency_key(part, edge))
            .map_err(|e| self.rocks(e))
    }

    /// Stores `bytes` under `name` among what the job derived from all rows.
    pub fn put_derived(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.db
            .put(derived_key(name), bytes)
            .map_err(|e| self.rocks(e))
    }

    /// What [`PartitionStore::put_derived`] stored under `name`.
    pub fn derived(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(derived_key(name)).map_err(|e| self.rocks(e))
    }

    /// The partitions marked under `prefix` (a mark key of partition 0).
    fn marked(&self, prefix: &[u8]) -> Result<Vec<u32>, StoreError> {
        let prefix = &prefix[..prefix.len() - 4];
        let mut held = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, _) = item.map_err(|e| self.rocks(e))?;
            let Some(part) = k.strip_prefix(prefix) else {
                break;
            };
            let part = <[u8; 4]>::try_from(part).map_err(|_| self.data("partitions", "bad key"))?;
            held.push(u32::from_be_bytes(part));
        }
        Ok(held)
    }

    /// Removes partitions `gone` (of `parts`) of every table in `tables`.
    pub fn remove(&self, tables: &[&str], gone: &[u32], parts: u32) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for &p in gone {
            batch.delete(held_key(parts, p));
            batch.delete(linked_key(parts, p));
            batch.delete_range(adjacency_key(p, 0), adjacency_key(p, u32::MAX));
            for name in tables {
                batch.delete_range(rows_key(name, p, 0), rows_key(name, p, u32::MAX));
                batch.delete_range(ids_key(name, p, 0), ids_key(name, p, u32::MAX));
                batch.delete(count_key(name, p));
            }
        }
        self.db
            .write_opt(batch, &WriteOptions::default())
            .map_err(|e| self.rocks(e))?;
        self.db.flush_wal(true).map_err(|e| self.rocks(e))
    }

    /// The stamp of the data its rows were taken from (see
    /// `relgraph_common::source::stamp`), None until one is set.
    pub fn data_stamp(&self) -> Result<Option<u64>, StoreError> {
        let Some(bytes) = self.db.get(b"s/stamp").map_err(|e| self.rocks(e))? else {
            return Ok(None);
        };
        let bytes =
            <[u8; 8]>::try_from(&bytes[..]).map_err(|_| self.data("stamp", "not 8 bytes"))?;
        Ok(Some(u64::from_le_bytes(bytes)))
    }

    pub fn set_data_stamp(&self, stamp: u64) -> Result<(), StoreError> {
        self.db
            .put(b"s/stamp", stamp.to_le_bytes())
            .map_err(|e| self.rocks(e))
    }

    /// The stored schema (None before the first ingest).
    pub fn schema(&self) -> Result<Option<DatabaseSchema>, StoreError> {
        let Some(bytes) = self.db.get(b"s/schema").map_err(|e| self.rocks(e))? else {
            return Ok(None);
        };
        let proto = pb::DatabaseSchema::decode(&bytes[..]).map_err(|e| self.data("schema", e))?;
        DatabaseSchema::try_from(&proto)
            .map(Some)
            .map_err(|e| self.data("schema", e))
    }

    /// Every stored row of `table`, partitions in order, as one batch (None if the
    /// table holds no chunk here).
    pub fn rows(&self, table: &str) -> Result<Option<RecordBatch>, StoreError> {
        Ok(self.rows_with_ids(table)?.map(|(_, batch)| batch))
    }

    /// Every stored row of `table` and its position in the table it was ingested from,
    /// partitions in order (None if the table holds no chunk here).
    pub fn rows_with_ids(
        &self,
        table: &str,
    ) -> Result<Option<(Vec<u32>, RecordBatch)>, StoreError> {
        self.read_rows(table, &[format!("r/{table}/").into_bytes()])
    }

    /// [`PartitionStore::rows_with_ids`] of partitions `parts` only, in that order.
    pub fn rows_with_ids_in(
        &self,
        table: &str,
        parts: &[u32],
    ) -> Result<Option<(Vec<u32>, RecordBatch)>, StoreError> {
        let prefixes: Vec<Vec<u8>> = parts
            .iter()
            .map(|&p| {
                let mut k = rows_key(table, p, 0);
                k.truncate(k.len() - 4);
                k
            })
            .collect();
        self.read_rows(table, &prefixes)
    }

    /// The chunks of `table` under each of `prefixes` in turn.
    fn read_rows(
        &self,
        table: &str,
        prefixes: &[Vec<u8>],
    ) -> Result<Option<(Vec<u32>, RecordBatch)>, StoreError> {
        let (mut batches, mut ids) = (Vec::new(), Vec::new());
        let chunks = prefixes.iter().flat_map(|prefix| {
            self.db
                .iterator(IteratorMode::From(prefix, Direction::Forward))
                .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
        });
        for item in chunks {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            let batch = decode(&v).map_err(|e| self.data(format!("table {table}"), e))?;
            let mut id_key = k.to_vec();
            id_key[0] = b'g';
            let held = self
                .db
                .get(&id_key)
                .map_err(|e| self.rocks(e))?
                .filter(|b| b.len() == 4 * batch.num_rows())
                .ok_or_else(|| {
                    self.data(
                        format!("table {table}"),
                        "a chunk without its row positions",
                    )
                })?;
            ids.extend(
                held.chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            batches.push(batch);
        }
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        concat_batches(&first.schema(), &batches)
            .map(|batch| Some((ids, batch)))
            .map_err(|e| self.data(format!("table {table}"), e))
    }

    /// Rows of `table` in partition `part`, from the counts written with them.
    pub fn count(&self, table: &str, part: u32) -> Result<u64, StoreError> {
        Ok(self
            .db
            .get(count_key(table, part))
            .map_err(|e| self.rocks(e))?
            .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0))
    }
}

/// Key of appended event `seq`: `e/` and the sequence number, big-endian, so that
/// iteration replays events in the order they were acknowledged.
fn event_key(seq: u64) -> Vec<u8> {
    let mut k = b"e/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Key of a client's append id: `i/` and the id.
fn id_key(id: &str) -> Vec<u8> {
    let mut k = b"i/".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

impl PartitionStore {
    /// Appends rows of `table` (Flight `DoPut`) as event `seq`, under the client's append
    /// `id` when it gave one (in the same write), and returns once the write is synced
    /// to the WAL: an acknowledged append survives `kill -9`.
    pub fn append_event(
        &self,
        seq: u64,
        table: &str,
        rows: &RecordBatch,
        id: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut value = (table.len() as u32).to_le_bytes().to_vec();
        value.extend_from_slice(table.as_bytes());
        value.extend(encode(rows).map_err(|e| self.data(format!("event {seq}"), e))?);
        let mut batch = WriteBatch::default();
        batch.put(event_key(seq), value);
        if let Some(id) = id {
            batch.put(id_key(id), seq.to_be_bytes());
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.write_opt(batch, &sync).map_err(|e| self.rocks(e))
    }

    /// The append ids logged, each with its event's sequence number.
    pub fn append_ids(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        let prefix = id_key("");
        for item in self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| self.rocks(e))?;
            let Some(id) = key.strip_prefix(&prefix[..]) else {
                break;
            };
            let id = String::from_utf8(id.to_vec())
                .map_err(|_| self.data("append id", format!("{key:?}")))?;
            let seq = value
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| self.data(format!("append id {id}"), "bad sequence number"))?;
            out.push((id, seq));
        }
        Ok(out)
    }

    /// Every appended event, oldest first: (sequence number, table, rows).
    pub fn events(&self) -> Result<Vec<(u64, String, RecordBatch)>, StoreError> {
        let mut out = Vec::new();
        let start = event_key(0);
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| self.rocks(e))?;
            let Some(seq) = key.strip_prefix(b"e/") else {
                break;
            };
            let seq = u64::from_be_bytes(
                seq.try_into()
                    .map_err(|_| self.data("event key", format!("{key:?}")))?,
            );
            let bad = |what: &str| self.data(format!("event {seq}"), what);
            let len = value
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| bad("truncated"))? as usize;
            let table = value
                .get(4..4 + len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| bad("bad table name"))?;
            let rows = decode(&value[4 + len..]).map_err(|e| bad(&e.to_string()))?;
            out.push((seq, table.to_string(), rows));
        }
        Ok(out)
    }
}

/// `batch` as one Arrow IPC stream, as the store keeps a chunk.
pub fn encode(batch: &RecordBatch) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

/// The batch [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    reader
        .next()
        .unwrap_or_else(|| Err(arrow::error::ArrowError::IpcError("empty chunk".into())))
}
