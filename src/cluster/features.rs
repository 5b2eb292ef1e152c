//! Encoded rows over Flight: in a data-parallel job each worker encodes only the rows it
//! owns ([`OwnedFeatures`]) and serves them to the others; [`SplitFeatures`] is what its
//! batches read through, its own rows from memory and the rest from their owners, one
//! call per (table, owner) of a batch, all at the same time.
//!
//! Wire format, one `DoExchange` per call: the client sends the rows (`row` u32, sorted)
//! in messages whose first carries the command
//! `{"v":1,"op":"features","job":J,"attempt":A,"table":T}`; the server answers one batch,
//! a row per row asked in that order: `dense` (fixed-size list of f32, the table's dense
//! width), `ids` (fixed-size list of u32, its categorical ids; absent when it has none)
//! and `bag0`, `bag1`, ... (list of u32, one per multicategorical or text column).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, ListArray, RecordBatch, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::FlightData;
use arrow_flight::utils::batches_to_flight_data;
use relgraph_sampler::{Owners, owner};
use relgraph_worker::model::features::{
    Bags, EncoderInput, FeatureSource, OwnedFeatures, TableFeatures,
};

use super::flight::RemoteShard;

fn item(dtype: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", dtype, false))
}

/// The answer to a request for `rows` of `table` held in `owned`.
pub fn answer(
    owned: &OwnedFeatures,
    table: usize,
    rows: &[u32],
) -> Result<Vec<FlightData>, String> {
    let input = owned.gather(table, rows)?;
    let like = &owned.tables[table].1;
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let fixed = |dtype: DataType, width: usize, values: ArrayRef| {
        FixedSizeListArray::try_new(item(dtype), width as i32, values, None)
            .map_err(|e| e.to_string())
    };
    let dense = fixed(
        DataType::Float32,
        like.dense_width,
        Arc::new(Float32Array::from(input.dense)),
    )?;
    fields.push(Field::new("dense", dense.data_type().clone(), false));
    columns.push(Arc::new(dense));
    if like.categorical > 0 {
        let ids = fixed(
            DataType::UInt32,
            like.categorical,
            Arc::new(UInt32Array::from(Arc::unwrap_or_clone(input.ids))),
        )?;
        fields.push(Field::new("ids", ids.data_type().clone(), false));
        columns.push(Arc::new(ids));
    }
    for (i, bag) in input.bags.into_iter().enumerate() {
        let offsets: Vec<i32> = bag.offsets.iter().map(|&o| o as i32).collect();
        let list = ListArray::try_new(
            item(DataType::UInt32),
            OffsetBuffer::new(offsets.into()),
            Arc::new(UInt32Array::from(bag.ids)),
            None,
        )
        .map_err(|e| e.to_string())?;
        fields.push(Field::new(
            format!("bag{i}"),
            list.data_type().clone(),
            false,
        ));
        columns.push(Arc::new(list));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
    batches_to_flight_data(&schema, [&batch]).map_err(|e| e.to_string())
}

/// The rows of an answer to a request for `rows` rows, checked against the widths of
/// `like` (the same table's encoding here).
pub fn decode(
    batches: &[RecordBatch],
    rows: usize,
    like: &TableFeatures,
) -> Result<EncoderInput, String> {
    let mut out = EncoderInput {
        rows: 0,
        dense: Vec::with_capacity(rows * like.dense_width),
        ids: Arc::new(Vec::with_capacity(rows * like.categorical)),
        bags: (0..like.bags.len())
            .map(|_| Bags {
                offsets: vec![0],
                ids: Vec::new(),
            })
            .collect(),
    };
    let mut ids = Vec::with_capacity(rows * like.categorical);
    for b in batches {
        out.rows += b.num_rows();
        let fixed = |name: &str, width: usize| {
            let list = b
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
                .filter(|l| l.value_length() as usize == width && l.null_count() == 0)
                .ok_or_else(|| format!("`{name}` is missing or not {width} wide"))?;
            Ok::<_, String>(list.values().clone())
        };
        let dense = fixed("dense", like.dense_width)?;
        let dense = dense
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or("`dense` does not hold f32")?;
        out.dense.extend_from_slice(dense.values());
        if like.categorical > 0 {
            let values = fixed("ids", like.categorical)?;
            let values = values
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or("`ids` does not hold u32")?;
            ids.extend_from_slice(values.values());
        }
        for (i, bag) in out.bags.iter_mut().enumerate() {
            let name = format!("bag{i}");
            let list = b
                .column_by_name(&name)
                .and_then(|c| c.as_any().downcast_ref::<ListArray>())
                .ok_or_else(|| format!("`{name}` is missing or not a list"))?;
            let values = list
                .values()
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| format!("`{name}` does not hold u32"))?;
            for r in 0..list.len() {
                let (lo, hi) = (list.value_offsets()[r], list.value_offsets()[r + 1]);
                bag.ids
                    .extend_from_slice(&values.values()[lo as usize..hi as usize]);
                bag.offsets.push(bag.ids.len() as u32);
            }
        }
    }
    if out.rows != rows
        || out.dense.len() != rows * like.dense_width
        || ids.len() != rows * like.categorical
    {
        return Err(format!("{} rows answered for {rows} asked", out.rows));
    }
    out.ids = Arc::new(ids);
    Ok(out)
}

/// What a split worker's batches read encoded rows through: its own from memory, the
/// others' from the workers owning them.
#[derive(Debug)]
pub struct SplitFeatures {
    pub local: Arc<OwnedFeatures>,
    pub owners: Arc<Owners>,
    pub rank: usize,
    /// Every worker by rank, `None` for this one.
    pub remotes: Vec<Option<Arc<RemoteShard>>>,
}

impl FeatureSource for SplitFeatures {
    fn gather_tables(&self, wanted: &[Vec<u32>]) -> Result<Vec<EncoderInput>, String> {
        let workers = self.remotes.len();
        // Per table: the owner of each row, and per owner its rows (in order).
        let mut picks: Vec<Vec<u16>> = Vec::with_capacity(wanted.len());
        let mut asks: Vec<Vec<Vec<u32>>> = Vec::with_capacity(wanted.len());
        for (t, rows) in wanted.iter().enumerate() {
            let mut per = vec![Vec::new(); workers];
            let pick = rows
                .iter()
                .map(|&r| {
                    let o = owner(&self.owners, t, r);
                    per[o].push(r);
                    o as u16
                })
                .collect();
            picks.push(pick);
            asks.push(per);
        }
        let remote = |t: usize, w: usize| -> Result<EncoderInput, String> {
            let shard = self.remotes[w]
                .as_ref()
                .ok_or_else(|| format!("no connection to worker {w}"))?;
            let rows = &asks[t][w];
            let batches = shard.features(t, rows)?;
            decode(&batches, rows.len(), &self.local.tables[t].1)
                .map_err(|e| format!("worker {w}, table {t}: {e}"))
        };
        let calls: Vec<(usize, usize)> = (0..wanted.len())
            .flat_map(|t| (0..workers).map(move |w| (t, w)))
            .filter(|&(t, w)| w != self.rank && !asks[t][w].is_empty())
            .collect();
        metrics::counter!("relgraph_flight_feature_calls_total").increment(calls.len() as u64);
        // Each remote call on a thread of its own while this one gathers the local rows.
        let (local, answers) = std::thread::scope(|scope| {
            let threads: Vec<_> = calls
                .iter()
                .map(|&(t, w)| scope.spawn(move || remote(t, w)))
                .collect();
            let local: Result<Vec<EncoderInput>, String> = (0..wanted.len())
                .map(|t| self.local.gather(t, &asks[t][self.rank]))
                .collect();
            let answers: Vec<Result<EncoderInput, String>> = threads
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect();
            (local, answers)
        });
        let mut parts: Vec<Vec<EncoderInput>> = local?
            .into_iter()
            .map(|l| {
                let mut v = vec![EncoderInput::default(); workers];
                v[self.rank] = l;
                v
            })
            .collect();
        for (&(t, w), answer) in calls.iter().zip(answers) {
            parts[t][w] = answer?;
        }
        Ok(parts
            .into_iter()
            .enumerate()
            .map(|(t, mut p)| {
                if asks[t][self.rank].len() == wanted[t].len() {
                    std::mem::take(&mut p[self.rank])
                } else {
                    EncoderInput::interleave(&p, &picks[t], &self.local.tables[t].1)
                }
            })
            .collect())
    }
}
