//! Column encoders by semantic type (ARCHITECTURE.md §5): what each column of a table
//! becomes before the model sees it. [`TableCode`] is fitted once on the data and saved
//! with the model; [`TableCode::apply`] turns a table into [`TableFeatures`]: a dense
//! block (numerical and timestamp parts) and ids into the table's embedding rows
//! (categorical, multicategorical, hashed text), from which batches gather rows.
//!
//! - numerical: standardised (clipped to ±10) plus a missing flag;
//! - timestamp: day of year, day of week and hour as sine/cosine, the standardised year,
//!   and a missing flag;
//! - categorical: one embedding per value among the `max_vocab` most frequent; row 0 of
//!   the column's block is the shared bucket of missing and unseen values;
//! - multicategorical (`a|b;c`): the mean of its values' embeddings;
//! - text: the mean embedding of its hashed words and word pairs (no model download).
//!
//! Every table's dense block starts with a constant 1, so a table without feature
//! columns still has a (learned) embedding.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampSecondArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use rayon::iter::{IndexedParallelIterator, IntoParallelRefIterator, ParallelIterator};
use relgraph_common::Database;
use relgraph_common::hash::{FNV_BASIS, fnv1a};
use relgraph_common::schema::SType;
use relgraph_common::time::{DAY, civil_from_days};
use serde::{Deserialize, Serialize};

/// How one column is encoded, with what was fitted on the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ColumnCode {
    Numerical {
        column: String,
        mean: f64,
        std: f64,
    },
    Timestamp {
        column: String,
        year_mean: f64,
        year_std: f64,
    },
    Categorical {
        column: String,
        vocab: Vec<String>,
        offset: u32,
    },
    Multicategorical {
        column: String,
        vocab: Vec<String>,
        offset: u32,
    },
    Text {
        column: String,
        buckets: u32,
        offset: u32,
    },
}

/// The encoders of one table's columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableCode {
    pub table: String,
    pub columns: Vec<ColumnCode>,
    /// Width of the dense block.
    pub dense: usize,
    /// Rows of the table's embedding (0: no categorical, multicategorical or text column).
    pub vocab: usize,
}

/// A table's encoded columns, row by row.
#[derive(Clone, Debug, Default)]
pub struct TableFeatures {
    pub rows: usize,
    pub dense_width: usize,
    /// `rows x dense_width`.
    pub dense: Vec<f32>,
    /// Categorical ids, `rows x categorical` (each id already offset into the table's
    /// embedding).
    pub categorical: usize,
    pub ids: Vec<u32>,
    /// Multicategorical and text columns: one bag per row each.
    pub bags: Vec<Bags>,
}

/// Variable-length id lists, one per row: row `r` holds `ids[offsets[r]..offsets[r + 1]]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bags {
    pub offsets: Vec<u32>,
    pub ids: Vec<u32>,
}

/// The rows of a batch's nodes of one table, ready for the encoder.
#[derive(Clone, Debug, Default)]
pub struct EncoderInput {
    pub rows: usize,
    pub dense: Vec<f32>,
    pub ids: Arc<Vec<u32>>,
    pub bags: Vec<Bags>,
}

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("table `{table}`: the model was trained with column `{column}`, which the data lacks")]
    MissingColumn { table: String, column: String },
    #[error("the model was trained with a table `{0}`, which the data lacks")]
    MissingTable(String),
    #[error("table `{table}`, column `{column}`: {problem}")]
    Column {
        table: String,
        column: String,
        problem: String,
    },
}

/// Options of the encoders.
#[derive(Clone, Copy, Debug)]
pub struct EncoderOptions {
    pub max_vocab: usize,
    pub text_buckets: u32,
}

pub const TIMESTAMP_WIDTH: usize = 8;

impl ColumnCode {
    /// The column's name.
    pub fn name(&self) -> &str {
        match self {
            ColumnCode::Numerical { column, .. }
            | ColumnCode::Timestamp { column, .. }
            | ColumnCode::Categorical { column, .. }
            | ColumnCode::Multicategorical { column, .. }
            | ColumnCode::Text { column, .. } => column,
        }
    }
}

impl TableCode {
    /// Fits the encoders of every non-key column of `table` but those in `skip` (a
    /// static target is never its own feature).
    pub fn fit(
        db: &Database,
        table: usize,
        skip: &[usize],
        options: EncoderOptions,
    ) -> Result<Self, FeatureError> {
        let t = &db.tables[table];
        let mut columns = Vec::new();
        let (mut dense, mut vocab) = (1, 0u32);
        for (c, schema) in t.schema.columns.iter().enumerate() {
            if skip.contains(&c) {
                continue;
            }
            let array = t.batch.column(c);
            let column = schema.name.clone();
            let code = match schema.stype {
                SType::Id => continue,
                SType::Numerical => {
                    let values = numbers(array, &t.schema.name, &column)?;
                    let (mean, std) = moments(values.iter().flatten().copied());
                    dense += 2;
                    ColumnCode::Numerical { column, mean, std }
                }
                SType::Timestamp => {
                    let years = timestamps(array, &t.schema.name, &column)?
                        .iter()
                        .flatten()
                        .map(|&s| year(s))
                        .collect::<Vec<_>>();
                    let (year_mean, year_std) = moments(years.into_iter());
                    dense += TIMESTAMP_WIDTH;
                    ColumnCode::Timestamp {
                        column,
                        year_mean,
                        year_std,
                    }
                }
                SType::Categorical | SType::Multicategorical => {
                    let multi = schema.stype == SType::Multicategorical;
                    let strings = texts(array, &t.schema.name, &column)?;
                    let values = top_values(&strings, multi, options.max_vocab);
                    let offset = vocab;
                    vocab += values.len() as u32 + 1;
                    if multi {
                        ColumnCode::Multicategorical {
                            column,
                            vocab: values,
                            offset,
                        }
                    } else {
                        ColumnCode::Categorical {
                            column,
                            vocab: values,
                            offset,
                        }
                    }
                }
                SType::Text => {
                    let offset = vocab;
                    vocab += options.text_buckets;
                    ColumnCode::Text {
                        column,
                        buckets: options.text_buckets,
                        offset,
                    }
                }
            };
            columns.push(code);
        }
        Ok(TableCode {
            table: t.schema.name.clone(),
            columns,
            dense,
            vocab: vocab as usize,
        })
    }

    /// Encodes the rows of the table this code was fitted on (found by name in `db`).
    pub fn apply(&self, db: &Database) -> Result<TableFeatures, FeatureError> {
        let t = db
            .table(&self.table)
            .ok_or_else(|| FeatureError::MissingTable(self.table.clone()))?;
        self.encode(&t.batch)
    }

    /// Encodes the rows of `batch`, which holds the table's columns by name (its rows,
    /// or rows appended to it).
    pub fn encode(&self, batch: &RecordBatch) -> Result<TableFeatures, FeatureError> {
        let rows = batch.num_rows();
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| FeatureError::MissingColumn {
                    table: self.table.clone(),
                    column: name.to_string(),
                })
        };
        let mut dense = vec![0f32; rows * self.dense];
        for r in 0..rows {
            dense[r * self.dense] = 1.0;
        }
        let mut slot = 1;
        let mut categorical: Vec<Vec<u32>> = Vec::new();
        let mut bags = Vec::new();
        for code in &self.columns {
            match code {
                ColumnCode::Numerical {
                    column: c,
                    mean,
                    std,
                } => {
                    let values = numbers(column(c)?, &self.table, c)?;
                    for (r, v) in values.iter().enumerate() {
                        let row = &mut dense[r * self.dense + slot..][..2];
                        match v {
                            Some(x) => row[0] = ((x - mean) / std).clamp(-10.0, 10.0) as f32,
                            None => row[1] = 1.0,
                        }
                    }
                    slot += 2;
                }
                ColumnCode::Timestamp {
                    column: c,
                    year_mean,
                    year_std,
                } => {
                    let values = timestamps(column(c)?, &self.table, c)?;
                    for (r, v) in values.iter().enumerate() {
                        let row = &mut dense[r * self.dense + slot..][..TIMESTAMP_WIDTH];
                        match v {
                            Some(s) => cyclic(*s, (year(*s) - year_mean) / year_std, row),
                            None => row[TIMESTAMP_WIDTH - 1] = 1.0,
                        }
                    }
                    slot += TIMESTAMP_WIDTH;
                }
                ColumnCode::Categorical {
                    column: c,
                    vocab,
                    offset,
                } => {
                    let index = vocab_index(vocab);
                    let strings = texts(column(c)?, &self.table, c)?;
                    categorical.push(
                        strings
                            .iter()
                            .map(|s| {
                                offset
                                    + s.as_deref().and_then(|s| index.get(s)).map_or(0, |i| i + 1)
                            })
                            .collect(),
                    );
                }
                ColumnCode::Multicategorical {
                    column: c,
                    vocab,
                    offset,
                } => {
                    let index = vocab_index(vocab);
                    let strings = texts(column(c)?, &self.table, c)?;
                    bags.push(bag(&strings, |s, out| {
                        for part in split_multi(s) {
                            out.push(offset + index.get(part).map_or(0, |i| i + 1));
                        }
                    }));
                }
                ColumnCode::Text {
                    column: c,
                    buckets,
                    offset,
                } => {
                    let strings = texts(column(c)?, &self.table, c)?;
                    bags.push(bag(&strings, |s, out| {
                        tokens(s, |h| out.push(offset + (h % u64::from(*buckets)) as u32));
                    }));
                }
            }
        }
        let mut ids = Vec::with_capacity(rows * categorical.len());
        for r in 0..rows {
            ids.extend(categorical.iter().map(|c| c[r]));
        }
        Ok(TableFeatures {
            rows,
            dense_width: self.dense,
            dense,
            categorical: categorical.len(),
            ids,
            bags,
        })
    }
}

impl TableFeatures {
    /// Appends `more` (rows encoded by the same code) after this table's rows.
    pub fn extend(&mut self, more: TableFeatures) {
        debug_assert_eq!(self.dense_width, more.dense_width);
        debug_assert_eq!(self.categorical, more.categorical);
        self.rows += more.rows;
        self.dense.extend(more.dense);
        self.ids.extend(more.ids);
        for (bags, more) in self.bags.iter_mut().zip(more.bags) {
            let base = bags.ids.len() as u32;
            bags.offsets
                .extend(more.offsets[1..].iter().map(|o| o + base));
            bags.ids.extend(more.ids);
        }
    }

    /// The encoder's input for `rows` (rows of this table, in this order).
    pub fn gather(&self, rows: &[u32]) -> EncoderInput {
        let w = self.dense_width;
        let mut dense = Vec::with_capacity(rows.len() * w);
        let mut ids = Vec::with_capacity(rows.len() * self.categorical);
        for &r in rows {
            let r = r as usize;
            dense.extend_from_slice(&self.dense[r * w..(r + 1) * w]);
            ids.extend_from_slice(&self.ids[r * self.categorical..(r + 1) * self.categorical]);
        }
        let bags = self
            .bags
            .iter()
            .map(|b| {
                let mut out = Bags {
                    offsets: Vec::with_capacity(rows.len() + 1),
                    ids: Vec::new(),
                };
                out.offsets.push(0);
                for &r in rows {
                    let (lo, hi) = (b.offsets[r as usize], b.offsets[r as usize + 1]);
                    out.ids.extend_from_slice(&b.ids[lo as usize..hi as usize]);
                    out.offsets.push(out.ids.len() as u32);
                }
                out
            })
            .collect();
        EncoderInput {
            rows: rows.len(),
            dense,
            ids: Arc::new(ids),
            bags,
        }
    }
}

/// Where a batch reads its nodes' encoded rows: every table's, held in this process, or
/// those of a data-parallel job whose rows are held by the workers owning them.
pub trait FeatureSource: Send + Sync {
    /// Per table `t`, the encoder's input for its rows `wanted[t]` (sorted, distinct),
    /// in that order.
    fn gather_tables(&self, wanted: &[Vec<u32>]) -> Result<Vec<EncoderInput>, String>;
}

impl FeatureSource for Vec<TableFeatures> {
    fn gather_tables(&self, wanted: &[Vec<u32>]) -> Result<Vec<EncoderInput>, String> {
        if wanted.len() != self.len() {
            return Err(format!(
                "rows asked of {} tables, {} held",
                wanted.len(),
                self.len()
            ));
        }
        Ok(self
            .iter()
            .zip(wanted)
            .map(|(f, rows)| f.gather(rows))
            .collect())
    }
}

/// A worker's own rows of each table, encoded: what it serves to the other workers of a
/// data-parallel job and reads its own nodes from.
#[derive(Clone, Debug, Default)]
pub struct OwnedFeatures {
    /// Per table: the rows held (sorted table rows) and their encodings, in that order.
    pub tables: Vec<(Vec<u32>, TableFeatures)>,
}

impl OwnedFeatures {
    /// Encodes, with `codes`, the rows of `db` that `keep(table, row)` says are this
    /// worker's.
    pub fn encode(
        db: &Database,
        codes: &[TableCode],
        keep: impl Fn(usize, u32) -> bool + Sync,
    ) -> Result<Self, FeatureError> {
        let held = codes
            .iter()
            .enumerate()
            .map(|(t, code)| {
                let table = db
                    .table(&code.table)
                    .ok_or_else(|| FeatureError::MissingTable(code.table.clone()))?;
                let rows: Vec<u32> = (0..table.num_rows() as u32)
                    .filter(|&r| keep(t, r))
                    .collect();
                let taken = take_rows(&code.table, &table.batch, &rows)?;
                Ok((rows, taken))
            })
            .collect::<Result<Vec<_>, FeatureError>>()?;
        Self::from_rows(codes, held)
    }

    /// Encodes, with `codes`, each table's rows held here: (their rows in the table, in
    /// any order, and their columns).
    pub fn from_rows(
        codes: &[TableCode],
        held: Vec<(Vec<u32>, RecordBatch)>,
    ) -> Result<Self, FeatureError> {
        let tables = codes
            .par_iter()
            .zip(held)
            .map(|(code, (rows, batch))| {
                let (rows, batch) = if rows.is_sorted() {
                    (rows, batch)
                } else {
                    let mut order: Vec<u32> = (0..rows.len() as u32).collect();
                    order.sort_unstable_by_key(|&i| rows[i as usize]);
                    let sorted = order.iter().map(|&i| rows[i as usize]).collect();
                    (sorted, take_rows(&code.table, &batch, &order)?)
                };
                Ok((rows, code.encode(&batch)?))
            })
            .collect::<Result<Vec<_>, FeatureError>>()?;
        Ok(OwnedFeatures { tables })
    }

    /// Rows of all tables held.
    pub fn rows(&self) -> usize {
        self.tables.iter().map(|(r, _)| r.len()).sum()
    }

    /// Bytes of the encodings held.
    pub fn bytes(&self) -> usize {
        let bags = |f: &TableFeatures| -> usize {
            f.bags.iter().map(|b| b.offsets.len() + b.ids.len()).sum()
        };
        self.tables
            .iter()
            .map(|(r, f)| 4 * (r.len() + f.dense.len() + f.ids.len() + bags(f)))
            .sum()
    }

    /// The encoder's input for `rows` of `table`, every one of them held here.
    pub fn gather(&self, table: usize, rows: &[u32]) -> Result<EncoderInput, String> {
        let (held, features) = self
            .tables
            .get(table)
            .ok_or_else(|| format!("table {table} of {}", self.tables.len()))?;
        let at = rows
            .iter()
            .map(|r| {
                held.binary_search(r)
                    .map(|i| i as u32)
                    .map_err(|_| format!("row {r} of table {table} is not held here"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(features.gather(&at))
    }
}

impl EncoderInput {
    /// Rows taken in turn from `parts`: row `i` is the next unread row of part `pick[i]`.
    /// `like` gives the widths (every part has them).
    pub fn interleave(parts: &[EncoderInput], pick: &[u16], like: &TableFeatures) -> Self {
        let (w, c) = (like.dense_width, like.categorical);
        let mut next = vec![0usize; parts.len()];
        let mut dense = Vec::with_capacity(pick.len() * w);
        let mut ids = Vec::with_capacity(pick.len() * c);
        let mut bags: Vec<Bags> = (0..like.bags.len())
            .map(|_| Bags {
                offsets: vec![0],
                ids: Vec::new(),
            })
            .collect();
        for &p in pick {
            let (part, r) = (&parts[p as usize], next[p as usize]);
            next[p as usize] += 1;
            dense.extend_from_slice(&part.dense[r * w..(r + 1) * w]);
            ids.extend_from_slice(&part.ids[r * c..(r + 1) * c]);
            for (out, b) in bags.iter_mut().zip(&part.bags) {
                let (lo, hi) = (b.offsets[r] as usize, b.offsets[r + 1] as usize);
                out.ids.extend_from_slice(&b.ids[lo..hi]);
                out.offsets.push(out.ids.len() as u32);
            }
        }
        EncoderInput {
            rows: pick.len(),
            dense,
            ids: Arc::new(ids),
            bags,
        }
    }
}

fn take_rows(table: &str, batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch, FeatureError> {
    arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(rows.to_vec()))
        .map_err(|e| problem(table, "(all)", e.to_string()))
}

fn problem(table: &str, column: &str, problem: impl Into<String>) -> FeatureError {
    FeatureError::Column {
        table: table.to_string(),
        column: column.to_string(),
        problem: problem.into(),
    }
}

fn numbers(array: &ArrayRef, table: &str, column: &str) -> Result<Vec<Option<f64>>, FeatureError> {
    let cast =
        cast(array, &DataType::Float64).map_err(|e| problem(table, column, e.to_string()))?;
    let values = cast
        .as_any()
        .downcast_ref::<Float64Array>()
        .ok_or_else(|| problem(table, column, "not numeric"))?;
    Ok(values.iter().map(|v| v.filter(|x| x.is_finite())).collect())
}

fn timestamps(
    array: &ArrayRef,
    table: &str,
    column: &str,
) -> Result<Vec<Option<i64>>, FeatureError> {
    let values = array
        .as_any()
        .downcast_ref::<TimestampSecondArray>()
        .ok_or_else(|| problem(table, column, "a timestamp column that holds no timestamps"))?;
    Ok(values.iter().collect())
}

fn texts(array: &ArrayRef, table: &str, column: &str) -> Result<Vec<Option<String>>, FeatureError> {
    let cast = cast(array, &DataType::Utf8).map_err(|e| problem(table, column, e.to_string()))?;
    let values = cast
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| problem(table, column, "not text"))?;
    Ok(values.iter().map(|v| v.map(str::to_string)).collect())
}

/// Mean and standard deviation (1 where there is no spread).
fn moments(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
    for v in values {
        n += 1.0;
        sum += v;
        sq += v * v;
    }
    if n == 0.0 {
        return (0.0, 1.0);
    }
    let mean = sum / n;
    let var = (sq / n - mean * mean).max(0.0);
    (mean, if var > 1e-12 { var.sqrt() } else { 1.0 })
}

fn year(seconds: i64) -> f64 {
    civil_from_days(seconds.div_euclid(DAY)).0 as f64
}

/// Day of year, day of week and hour of day as sine and cosine, then the year.
fn cyclic(seconds: i64, year: f64, out: &mut [f32]) {
    let days = seconds.div_euclid(DAY);
    let (y, _, _) = civil_from_days(days);
    let day_of_year = (days - relgraph_common::time::days_from_civil(y, 1, 1)) as f64 / 365.25;
    let day_of_week = (days + 3).rem_euclid(7) as f64 / 7.0;
    let hour = seconds.rem_euclid(DAY) as f64 / DAY as f64;
    let tau = std::f64::consts::TAU;
    for (k, phase) in [day_of_year, day_of_week, hour].into_iter().enumerate() {
        out[2 * k] = (tau * phase).sin() as f32;
        out[2 * k + 1] = (tau * phase).cos() as f32;
    }
    out[6] = year.clamp(-10.0, 10.0) as f32;
}

fn split_multi(s: &str) -> impl Iterator<Item = &str> {
    s.split(['|', ';']).map(str::trim).filter(|p| !p.is_empty())
}

/// The `max` most frequent values (ties by value), most frequent first.
fn top_values(strings: &[Option<String>], multi: bool, max: usize) -> Vec<String> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for s in strings.iter().flatten() {
        if multi {
            for part in split_multi(s) {
                *counts.entry(part).or_default() += 1;
            }
        } else {
            *counts.entry(s.as_str()).or_default() += 1;
        }
    }
    let mut values: Vec<(&str, u64)> = counts.into_iter().collect();
    values.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    values
        .into_iter()
        .take(max)
        .map(|(s, _)| s.to_string())
        .collect()
}

fn vocab_index(vocab: &[String]) -> HashMap<&str, u32> {
    vocab
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_str(), i as u32))
        .collect()
}

fn bag(strings: &[Option<String>], mut ids: impl FnMut(&str, &mut Vec<u32>)) -> Bags {
    let mut out = Bags {
        offsets: Vec::with_capacity(strings.len() + 1),
        ids: Vec::new(),
    };
    out.offsets.push(0);
    for s in strings {
        if let Some(s) = s {
            ids(s, &mut out.ids);
        }
        out.offsets.push(out.ids.len() as u32);
    }
    out
}

/// Hashes of the lower-cased words of `s` and of each pair of adjacent words.
fn tokens(s: &str, mut emit: impl FnMut(u64)) {
    let mut previous: Option<u64> = None;
    for word in s
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let lower = word.to_lowercase();
        let h = fnv1a(lower.bytes(), FNV_BASIS);
        emit(h);
        if let Some(p) = previous {
            emit(fnv1a(h.to_le_bytes(), p ^ 0x9e37_79b9));
        }
        previous = Some(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_pairs_are_hashed_case_blind() {
        let mut a = Vec::new();
        tokens("Nordic Pro camera", |h| a.push(h));
        let mut b = Vec::new();
        tokens("nordic PRO, Camera!", |h| b.push(h));
        assert_eq!(a.len(), 5);
        assert_eq!(a, b);
    }

    #[test]
    fn cyclic_parts_are_on_the_unit_circle() {
        let mut out = [0f32; TIMESTAMP_WIDTH];
        cyclic(1_735_689_600 + 3 * 3600, 0.5, &mut out);
        for k in 0..3 {
            let r = out[2 * k].powi(2) + out[2 * k + 1].powi(2);
            assert!((r - 1.0).abs() < 1e-5);
        }
        assert_eq!(out[6], 0.5);
        assert_eq!(out[7], 0.0);
    }

    #[test]
    fn rare_values_share_the_unseen_bucket() {
        let strings: Vec<Option<String>> = ["a", "b", "a", "c", "a", "b"]
            .iter()
            .map(|s| Some(s.to_string()))
            .collect();
        assert_eq!(top_values(&strings, false, 2), vec!["a", "b"]);
        let multi = vec![Some("x|y; x".to_string()), None];
        assert_eq!(top_values(&multi, true, 10), vec!["x", "y"]);
    }

    /// Six rows: dense `[r, -r]`, one categorical id `10 + r`, one bag of `r` ids.
    fn six_rows() -> TableFeatures {
        let mut bags = Bags {
            offsets: vec![0],
            ids: Vec::new(),
        };
        for r in 0..6u32 {
            bags.ids.extend(std::iter::repeat_n(r, r as usize));
            bags.offsets.push(bags.ids.len() as u32);
        }
        TableFeatures {
            rows: 6,
            dense_width: 2,
            dense: (0..6).flat_map(|r| [r as f32, -(r as f32)]).collect(),
            categorical: 1,
            ids: (10..16).collect(),
            bags: vec![bags],
        }
    }

    #[test]
    fn rows_held_in_parts_interleave_into_the_whole_gather() {
        let whole = six_rows();
        // Part 0 holds rows 1, 4, 5 and part 1 rows 0, 2, 3.
        let held = [vec![1u32, 4, 5], vec![0u32, 2, 3]];
        let owned: Vec<OwnedFeatures> = held
            .iter()
            .map(|rows| OwnedFeatures {
                tables: vec![(rows.clone(), {
                    let g = whole.gather(rows);
                    TableFeatures {
                        rows: g.rows,
                        dense_width: 2,
                        dense: g.dense,
                        categorical: 1,
                        ids: g.ids.to_vec(),
                        bags: g.bags,
                    }
                })],
            })
            .collect();
        let wanted = [0u32, 2, 4, 5];
        let pick = [1u16, 1, 0, 0];
        let parts = [
            owned[0].gather(0, &[4, 5]).expect("held"),
            owned[1].gather(0, &[0, 2]).expect("held"),
        ];
        let got = EncoderInput::interleave(&parts, &pick, &whole);
        let want = whole.gather(&wanted);
        assert_eq!(got.rows, 4);
        assert_eq!(got.dense, want.dense);
        assert_eq!(got.ids, want.ids);
        assert_eq!(got.bags, want.bags);
        let err = owned[0].gather(0, &[2]).expect_err("not held");
        assert!(err.contains("row 2 of table 0 is not held here"), "{err}");
    }
}
