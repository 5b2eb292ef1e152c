//! [`EncoderCache`]: the encoder's output per table row, kept between requests of a
//! served model version.
//!
//! A row's encoding depends only on its columns and the model's parameters (the time
//! encoding, which depends on the seed's anchor, is added after), so once computed it
//! holds for every later request of the same model version; appended rows are new rows
//! and change no existing one. Online requests of nearby entities share much of their
//! subgraphs (the products everyone buys, for one), and the encoder is most of a small
//! request's work. Each table's rows are spread over shards, each its own lock; a full
//! shard is emptied before taking a new row, so memory stays bounded and no request
//! waits on a global clear.

use std::sync::RwLock;

use rustc_hash::FxHashMap;

use super::features::{Bags, EncoderInput};

const SHARDS: usize = 64;

type Shard = RwLock<FxHashMap<u32, Box<[f32]>>>;

pub struct EncoderCache {
    tables: Vec<Vec<Shard>>,
    channels: usize,
    /// Rows per shard before it is emptied.
    per_shard: usize,
}

impl std::fmt::Debug for EncoderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderCache")
            .field("tables", &self.tables.len())
            .field("channels", &self.channels)
            .field("per_shard", &self.per_shard)
            .finish()
    }
}

impl EncoderCache {
    /// A cache for `tables` tables of `channels`-wide encodings, holding at most about
    /// `bytes`.
    pub fn new(tables: usize, channels: usize, bytes: usize) -> Self {
        let rows = bytes / (channels.max(1) * size_of::<f32>());
        EncoderCache {
            tables: (0..tables)
                .map(|_| (0..SHARDS).map(|_| RwLock::default()).collect())
                .collect(),
            channels,
            per_shard: (rows / (tables.max(1) * SHARDS)).max(1),
        }
    }

    fn shard(&self, table: usize, row: u32) -> &Shard {
        &self.tables[table][row as usize % SHARDS]
    }

    /// Copies the cached encodings of `rows` of `table` into `out` (rows x channels);
    /// returns the positions it did not have.
    pub fn fill(&self, table: usize, rows: &[u32], out: &mut [f32]) -> Vec<usize> {
        let c = self.channels;
        let mut missing = Vec::new();
        for (i, &r) in rows.iter().enumerate() {
            let shard = self
                .shard(table, r)
                .read()
                .unwrap_or_else(|e| e.into_inner());
            match shard.get(&r) {
                Some(v) => out[i * c..(i + 1) * c].copy_from_slice(v),
                None => missing.push(i),
            }
        }
        missing
    }

    /// Keeps the encodings of `rows` (`values`, rows x channels).
    pub fn insert(&self, table: usize, rows: &[u32], values: &[f32]) {
        let c = self.channels;
        for (&r, v) in rows.iter().zip(values.chunks_exact(c)) {
            let mut shard = self
                .shard(table, r)
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if shard.len() >= self.per_shard && !shard.contains_key(&r) {
                shard.clear();
            }
            shard.insert(r, v.into());
        }
    }
}

impl EncoderInput {
    /// The rows at `positions`, in that order.
    pub fn select(&self, positions: &[usize]) -> EncoderInput {
        let n = self.rows.max(1);
        let width = self.dense.len() / n;
        let per_row = self.ids.len() / n;
        let pick = |values: &[u32], per: usize| -> Vec<u32> {
            positions
                .iter()
                .flat_map(|&p| values[p * per..(p + 1) * per].iter().copied())
                .collect()
        };
        EncoderInput {
            rows: positions.len(),
            dense: positions
                .iter()
                .flat_map(|&p| self.dense[p * width..(p + 1) * width].iter().copied())
                .collect(),
            ids: pick(&self.ids, per_row).into(),
            bags: self
                .bags
                .iter()
                .map(|b| {
                    let mut offsets = vec![0u32];
                    let mut ids = Vec::new();
                    for &p in positions {
                        ids.extend_from_slice(
                            &b.ids[b.offsets[p] as usize..b.offsets[p + 1] as usize],
                        );
                        offsets.push(ids.len() as u32);
                    }
                    Bags { offsets, ids }
                })
                .collect(),
        }
    }
}
