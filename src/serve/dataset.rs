//! The live data behind serving: appends checked, logged and applied.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use arrow::array::{Array, ArrayRef, RecordBatch, TimestampSecondArray, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{Schema, SchemaRef};
use relgraph_common::database::NO_ROW;
use relgraph_common::pql::bound::Value;
use relgraph_sampler::STATIC;
use relgraph_worker::label::{key_text, value_at};
use rustc_hash::FxHashSet;

use super::{Appended, Dataset, ServeError, Served, invalid};

impl Dataset {
    /// Checks `rows` against `table`, logs them when `log` (synced, with the append's
    /// `id` if it has one) and applies them.
    pub(super) fn append(
        &mut self,
        table: &str,
        rows: &RecordBatch,
        log: bool,
        id: Option<&str>,
    ) -> Result<Appended, ServeError> {
        let t = self
            .db
            .tables
            .iter()
            .position(|x| x.name() == table)
            .ok_or_else(|| {
                ServeError::NotFound(format!(
                    "no table `{table}`; tables: [{}]",
                    self.db
                        .tables
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let schema = &self.db.tables[t].schema;
        let batch = conform(table, &self.db.tables[t].batch.schema(), rows)?;
        let n = batch.num_rows();
        if self.rows[t] + n >= NO_ROW as usize {
            return Err(ServeError::TooLarge(format!(
                "table `{table}` would pass {} rows",
                NO_ROW
            )));
        }
        let text = |c: usize, r: usize| {
            let v = value_at(batch.column(c), schema.columns[c].dtype, r);
            (!matches!(v, Value::Null)).then(|| key_text(&v))
        };
        // Primary keys: present, new, distinct.
        let mut new_keys = Vec::new();
        if let (Some(pk), Some(index)) = (&schema.primary_key, &self.keys[t]) {
            let c = schema.column_index(pk).unwrap_or(0);
            let mut fresh = FxHashSet::default();
            for r in 0..n {
                let k = text(c, r).ok_or_else(|| {
                    invalid(format!("`{table}` row {r}: primary key `{pk}` is null"))
                })?;
                if index.rows.contains_key(&k) || !fresh.insert(k.clone()) {
                    return Err(invalid(format!(
                        "`{table}` row {r}: key {pk} = {k} exists already; appends add rows, they do not update them"
                    )));
                }
                new_keys.push(k);
            }
        }
        let times: Vec<i64> = match &schema.time_column {
            Some(tc) => {
                let c = batch
                    .column_by_name(tc)
                    .and_then(|a| a.as_any().downcast_ref::<TimestampSecondArray>().cloned());
                let c = c.ok_or_else(|| {
                    ServeError::Internal(format!("time column `{tc}` lost its type"))
                })?;
                (0..n)
                    .map(|r| if c.is_valid(r) { c.value(r) } else { STATIC })
                    .collect()
            }
            None => vec![STATIC; n],
        };
        // Links, per foreign key the graph has, in its order.
        let mut parents = Vec::new();
        let mut dangling = BTreeMap::new();
        for fk in &schema.foreign_keys {
            let (Some(c), Some(p)) = (
                schema.column_index(&fk.column),
                self.db
                    .tables
                    .iter()
                    .position(|x| x.name() == fk.references),
            ) else {
                continue;
            };
            let index = self.keys[p].as_ref();
            let mut column = Vec::with_capacity(n);
            let mut missing = 0;
            for r in 0..n {
                let parent = match text(c, r) {
                    None => NO_ROW,
                    Some(k) => match index.and_then(|i| i.rows.get(&k)) {
                        Some(&row) => row,
                        // A row of this same batch.
                        None if p == t => match new_keys.iter().position(|x| *x == k) {
                            Some(j) => (self.rows[t] + j) as u32,
                            None => {
                                missing += 1;
                                NO_ROW
                            }
                        },
                        None => {
                            missing += 1;
                            NO_ROW
                        }
                    },
                };
                column.push(parent);
            }
            if missing > 0 {
                dangling.insert(fk.column.clone(), missing);
            }
            parents.push(column);
        }
        // Encode for every model before anything changes, so a failure changes nothing.
        let served: Vec<Arc<Served>> = self.served.iter().filter_map(Weak::upgrade).collect();
        let encoded = served
            .iter()
            .map(|s| s.model.manifest.codes[t].encode(&batch))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("`{table}`: {e}")))?;
        let seq = self.seq + 1;
        if log {
            let store = self.store.as_ref().ok_or_else(|| invalid("no store"))?;
            store
                .append_event(seq, table, &batch, id)
                .map_err(|e| ServeError::Internal(e.to_string()))?;
        }
        self.seq = seq;
        Arc::make_mut(&mut self.graph)
            .append(t, &times, &parents)
            .map_err(|e| {
                ServeError::Internal(format!("appended rows logged but not applied: {e}"))
            })?;
        if let Some(index) = &mut self.keys[t] {
            for (j, k) in new_keys.into_iter().enumerate() {
                index.rows.insert(k.clone(), (self.rows[t] + j) as u32);
                index.texts.push(k);
            }
        }
        for (s, f) in served.iter().zip(encoded) {
            if let Ok(mut features) = s.features.write() {
                features[t].extend(f);
            }
        }
        self.rows[t] += n;
        if let Some(&latest) = times.iter().filter(|&&x| x != STATIC).max() {
            self.last_time = Some(self.last_time.map_or(latest, |l| l.max(latest)));
        }
        self.appended[t].push(batch);
        metrics::counter!("relgraph_rows_appended_total").increment(n as u64);
        Ok(Appended {
            table: table.to_string(),
            rows: n,
            seq,
            dangling,
            total: self.rows[t],
            duplicate: false,
        })
    }
}

/// `rows` in `table`'s schema: its columns by name, cast to the table's types (a
/// missing column is null; an unknown one, or a value that does not convert, is an
/// error that names it).
fn conform(table: &str, schema: &SchemaRef, rows: &RecordBatch) -> Result<RecordBatch, ServeError> {
    let given = rows.schema();
    if let Some(f) = given
        .fields()
        .iter()
        .find(|f| schema.field_with_name(f.name()).is_err())
    {
        return Err(invalid(format!(
            "`{table}` has no column `{}`; its columns: [{}]",
            f.name(),
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match rows.column_by_name(f.name()) {
            None => Ok(new_null_array(f.data_type(), rows.num_rows())),
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => cast_with_options(c, f.data_type(), &options).map_err(|e| {
                invalid(format!(
                    "`{table}`.`{}`: {} does not convert to {}: {e}",
                    f.name(),
                    c.data_type(),
                    f.data_type()
                ))
            }),
        })
        .collect::<Result<_, _>>()?;
    let schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(schema, columns).map_err(|e| invalid(format!("`{table}`: {e}")))
}
