//! The Raft log, hard state and snapshots of one coordinator, in RocksDB (WAL on, every
//! write synced before raft-rs is told it is persisted).
//!
//! Keys: `m/hs` the hard state, `m/snap` the last snapshot (metadata, conf state and the
//! encoded metadata state), `l/<index, 8 bytes big-endian>` the log entries after it.
//! The snapshot handed to a lagging follower is built from the live applied state
//! ([`Replica`]), so it is never older than what this node has applied.

use std::path::Path;
use std::sync::{Arc, RwLock};

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use relgraph_proto::cluster::ClusterState;
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};

/// The applied metadata of one coordinator, shared by its Raft loop (the only writer),
/// its storage (for snapshots) and its readers.
#[derive(Debug, Default)]
pub struct Replica {
    pub state: ClusterState,
    pub applied: u64,
    pub applied_term: u64,
    pub conf: ConfState,
}

pub type Shared = Arc<RwLock<Replica>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("raft store {path}: {source}")]
    Rocks {
        path: String,
        source: rocksdb::Error,
    },
    #[error("raft store {path}: damaged {what}: {detail}")]
    Damaged {
        path: String,
        what: &'static str,
        detail: String,
    },
}

pub struct RocksStore {
    db: DB,
    path: String,
    hard: HardState,
    snap: Snapshot,
    last: u64,
    replica: Shared,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("last", &self.last)
            .finish()
    }
}

const HARD: &[u8] = b"m/hs";
const SNAP: &[u8] = b"m/snap";

fn log_key(index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(b"l/");
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl RocksStore {
    /// Opens (or creates) the store in `dir`. A new store with `bootstrap` set starts as
    /// the single voter `id` of a new group whose metadata is `bootstrap`; a new store
    /// without it waits to be added by the leader (it learns everything from a snapshot).
    pub fn open(
        dir: &Path,
        id: u64,
        bootstrap: Option<ClusterState>,
    ) -> Result<(Self, Shared), StoreError> {
        let path = dir.display().to_string();
        let rocks = |source| StoreError::Rocks {
            path: path.clone(),
            source,
        };
        let damaged = |what, detail: String| StoreError::Damaged {
            path: path.clone(),
            what,
            detail,
        };
        let db = DB::open_default(dir).map_err(rocks)?;
        let mut hard = match db.get(HARD).map_err(rocks)? {
            Some(b) => {
                HardState::parse_from_bytes(&b).map_err(|e| damaged("hard state", e.to_string()))?
            }
            None => HardState::default(),
        };
        let mut snap = match db.get(SNAP).map_err(rocks)? {
            Some(b) => {
                Snapshot::parse_from_bytes(&b).map_err(|e| damaged("snapshot", e.to_string()))?
            }
            None => Snapshot::default(),
        };
        if snap.get_metadata().index == 0
            && let Some(state) = bootstrap
        {
            let meta = snap.mut_metadata();
            meta.index = 1;
            meta.term = 1;
            meta.mut_conf_state().voters = vec![id];
            snap.data = state.encode_to_vec().into();
            hard.term = 1;
            hard.commit = 1;
            let mut batch = WriteBatch::default();
            batch.put(
                SNAP,
                snap.write_to_bytes()
                    .map_err(|e| damaged("snapshot", e.to_string()))?,
            );
            batch.put(
                HARD,
                hard.write_to_bytes()
                    .map_err(|e| damaged("hard state", e.to_string()))?,
            );
            db.write_opt(batch, &synced()).map_err(rocks)?;
        }
        let end = log_key(u64::MAX);
        let last = match db
            .iterator(IteratorMode::From(&end, rocksdb::Direction::Reverse))
            .next()
        {
            Some(Ok((k, _))) if k.len() == 10 && k.starts_with(b"l/") => {
                u64::from_be_bytes(k[2..].try_into().unwrap_or_default())
            }
            Some(Err(e)) => return Err(rocks(e)),
            _ => 0,
        }
        .max(snap.get_metadata().index);
        let state = ClusterState::decode(&snap.data[..])
            .map_err(|e| damaged("snapshot state", e.to_string()))?;
        let replica = Arc::new(RwLock::new(Replica {
            state,
            applied: snap.get_metadata().index,
            applied_term: snap.get_metadata().term,
            conf: snap.get_metadata().get_conf_state().clone(),
        }));
        let store = RocksStore {
            db,
            path,
            hard,
            snap,
            last,
            replica: replica.clone(),
        };
        Ok((store, replica))
    }

    /// The index the state machine starts from after a restart (the snapshot's).
    pub fn snapshot_index(&self) -> u64 {
        self.snap.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snap.get_metadata().index + 1
    }

    /// Persists new entries, replacing any conflicting suffix of the log.
    pub fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        if first.index <= self.last {
            batch.delete_range(log_key(first.index), log_key(self.last + 1));
        }
        for e in entries {
            batch.put(log_key(e.index), e.write_to_bytes().map_err(store_err)?);
        }
        self.db.write_opt(batch, &synced()).map_err(store_err)?;
        self.last = entries.last().map_or(self.last, |e| e.index);
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: &HardState) -> raft::Result<()> {
        self.db
            .put_opt(HARD, hs.write_to_bytes().map_err(store_err)?, &synced())
            .map_err(store_err)?;
        self.hard = hs.clone();
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        let mut hs = self.hard.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Installs a snapshot received from the leader: it replaces the whole log.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> raft::Result<()> {
        let meta = snap.get_metadata();
        let mut batch = WriteBatch::default();
        batch.delete_range(log_key(0), log_key(u64::MAX));
        batch.put(SNAP, snap.write_to_bytes().map_err(store_err)?);
        let mut hs = self.hard.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        batch.put(HARD, hs.write_to_bytes().map_err(store_err)?);
        self.db.write_opt(batch, &synced()).map_err(store_err)?;
        self.hard = hs;
        self.snap = snap.clone();
        self.last = meta.index;
        Ok(())
    }

    /// Saves the applied state as the snapshot and drops the log up to it. Called after
    /// every configuration change (so a restart never replays one) and every
    /// `COMPACT_EVERY` entries.
    pub fn compact(&mut self) -> raft::Result<()> {
        let snap = self.live_snapshot()?;
        let index = snap.get_metadata().index;
        if index <= self.snapshot_index() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.put(SNAP, snap.write_to_bytes().map_err(store_err)?);
        batch.delete_range(log_key(0), log_key(index + 1));
        self.db.write_opt(batch, &synced()).map_err(store_err)?;
        self.snap = snap;
        self.last = self.last.max(index);
        Ok(())
    }

    fn live_snapshot(&self) -> raft::Result<Snapshot> {
        let r = self.replica.read().map_err(store_err)?;
        let mut snap = Snapshot {
            data: r.state.encode_to_vec().into(),
            ..Snapshot::default()
        };
        let meta = snap.mut_metadata();
        meta.index = r.applied;
        meta.term = r.applied_term;
        meta.set_conf_state(r.conf.clone());
        Ok(snap)
    }

    fn entry(&self, index: u64) -> raft::Result<Entry> {
        match self.db.get(log_key(index)).map_err(store_err)? {
            Some(b) => Entry::parse_from_bytes(&b).map_err(store_err),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

impl raft::Storage for RocksStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard.clone(),
            self.snap.get_metadata().get_conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for item in self.db.iterator(IteratorMode::From(
            &log_key(low),
            rocksdb::Direction::Forward,
        )) {
            let (k, v) = item.map_err(store_err)?;
            if k.as_ref() >= log_key(high).as_slice() {
                break;
            }
            let e = Entry::parse_from_bytes(&v).map_err(store_err)?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snap.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snap = self.live_snapshot()?;
        if snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}
