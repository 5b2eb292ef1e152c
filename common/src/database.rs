//! A loaded database: typed columnar tables (Arrow) with their schema and link statistics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayAccessor, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::compute::kernels::cast::cast;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rayon::prelude::*;

use crate::error::{LoadError, Result};
use crate::infer::{self, KeySet, KeyValues};
use crate::schema::{ColumnSchema, DType, DatabaseSchema, ForeignKey, SType, TableSchema};
use crate::schema_file::{SchemaFile, TableOverride, optional_name, suggest};
use crate::source::{self, RawTable, TableSource, as_text};

/// One table: its schema, its rows as one Arrow record batch, and link statistics.
#[derive(Debug)]
pub struct Table {
    pub schema: TableSchema,
    pub batch: RecordBatch,
    pub source: TableSource,
    /// Per foreign key (same order as `schema.foreign_keys`): rows whose non-null value
    /// has no row in the referenced table.
    pub dangling: Vec<u64>,
}

impl Table {
    pub fn name(&self) -> &str {
        &self.schema.name
    }

    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn column(&self, name: &str) -> Option<&ArrayRef> {
        self.schema.column_index(name).map(|i| self.batch.column(i))
    }
}

#[derive(Debug)]
pub struct Database {
    pub dir: PathBuf,
    pub tables: Vec<Table>,
    /// Entries of the directory that hold no table.
    pub skipped: Vec<PathBuf>,
}

/// "No row": a null or dangling foreign key in [`Database::parent_rows`].
pub const NO_ROW: u32 = u32::MAX;

/// For each of `values`, the position of the equal key in `keys` (keys are unique).
fn lookup<A>(keys: A, values: A) -> Vec<u32>
where
    A: ArrayAccessor + Sync,
    A::Item: std::hash::Hash + Eq + Send + Sync,
{
    let index: rustc_hash::FxHashMap<A::Item, u32> = (0..keys.len())
        .filter(|&i| keys.is_valid(i))
        .map(|i| (keys.value(i), i as u32))
        .collect();
    (0..values.len())
        .into_par_iter()
        .map(|r| {
            if values.is_valid(r) {
                index.get(&values.value(r)).copied().unwrap_or(NO_ROW)
            } else {
                NO_ROW
            }
        })
        .collect()
}

/// The Arrow schema relgraph holds a table of `schema` in: every column nullable, at the
/// type [`arrow_type`] gives.
pub fn arrow_schema(schema: &TableSchema) -> Schema {
    let fields: Vec<Field> = schema
        .columns
        .iter()
        .map(|c| Field::new(&c.name, arrow_type(c.dtype), true))
        .collect();
    Schema::new(fields)
}

/// The Arrow type relgraph stores a column of `dtype` as.
pub fn arrow_type(dtype: DType) -> DataType {
    match dtype {
        DType::Bool => DataType::Boolean,
        DType::Int64 => DataType::Int64,
        DType::Float64 => DataType::Float64,
        DType::String => DataType::Utf8,
        DType::Timestamp => DataType::Timestamp(TimeUnit::Second, None),
    }
}

impl Database {
    /// Loads every table of `dir`. The schema file is `schema_file`, else `dir/schema.toml`
    /// if present; what it leaves unsaid is inferred.
    pub fn load(dir: &Path, schema_file: Option<&Path>) -> Result<Database> {
        let listing = source::list(dir)?;
        let default_file = dir.join("schema.toml");
        let file = match schema_file {
            Some(p) => SchemaFile::read(p)?,
            None if default_file.is_file() => SchemaFile::read(&default_file)?,
            None => SchemaFile::default(),
        };
        let names: Vec<&str> = listing.sources.iter().map(|s| s.table.as_str()).collect();
        for name in file.tables.keys() {
            if !names.contains(&name.as_str()) {
                let hint = suggest(name, names.iter().copied());
                return Err(file.error(format!("no table `{name}` in {}{hint}", dir.display())));
            }
        }
        let typed: Vec<TypedTable> = listing
            .sources
            .into_par_iter()
            .map(|s| {
                let ov = file.table(&s.table).unwrap_or(&NO_OVERRIDE);
                TypedTable::new(s.read()?, ov, &file)
            })
            .collect::<Result<_>>()?;
        let tables = link(typed, &file)?;
        Ok(Database {
            dir: dir.to_path_buf(),
            tables,
            skipped: listing.skipped,
        })
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.schema.name == name)
    }

    /// For each row of table `child`, the row of `parent` whose primary key its column
    /// `column` holds; [`NO_ROW`] where the value is null or dangles.
    pub fn parent_rows(&self, child: usize, column: usize, parent: usize) -> Vec<u32> {
        let values = self.tables[child].batch.column(column);
        let parent = &self.tables[parent];
        let keys = parent
            .schema
            .primary_key
            .as_ref()
            .and_then(|k| parent.column(k));
        let (Some(keys), values) = (keys.map(|k| k.as_any()), values.as_any()) else {
            return vec![NO_ROW; values.len()];
        };
        if let (Some(k), Some(v)) = (
            keys.downcast_ref::<StringArray>(),
            values.downcast_ref::<StringArray>(),
        ) {
            return lookup(k, v);
        }
        if let (Some(k), Some(v)) = (
            keys.downcast_ref::<Int64Array>(),
            values.downcast_ref::<Int64Array>(),
        ) {
            return lookup(k, v);
        }
        vec![NO_ROW; self.tables[child].num_rows()]
    }

    pub fn schema(&self) -> DatabaseSchema {
        DatabaseSchema {
            tables: self.tables.iter().map(|t| t.schema.clone()).collect(),
        }
    }
}

static NO_OVERRIDE: std::sync::LazyLock<TableOverride> =
    std::sync::LazyLock::new(TableOverride::default);

/// A table with typed columns, its primary key and time column; links come later.
struct TypedTable {
    raw: RawTable,
    dtypes: Vec<DType>,
    primary_key: Option<usize>,
    time_column: Option<usize>,
}

impl TypedTable {
    fn new(mut raw: RawTable, ov: &TableOverride, file: &SchemaFile) -> Result<Self> {
        let table = raw.source.table.clone();
        for name in ov
            .columns
            .keys()
            .chain(ov.foreign_keys.iter().flat_map(|f| f.keys()))
        {
            column_of(&raw, &table, name, file)?;
        }
        let mut dtypes = Vec::with_capacity(raw.columns.len());
        for i in 0..raw.columns.len() {
            let wanted = ov.columns.get(&raw.columns[i].0).and_then(|c| c.dtype);
            let (dtype, array) = type_column(&raw, i, wanted)?;
            raw.columns[i].1 = array;
            dtypes.push(dtype);
        }
        let mut t = TypedTable {
            raw,
            dtypes,
            primary_key: None,
            time_column: None,
        };
        t.primary_key = match optional_name(&ov.primary_key) {
            Some(name) => name.map(|n| t.declared_key(n, file)).transpose()?,
            None => t.inferred_key()?,
        };
        t.time_column = match optional_name(&ov.time_column) {
            Some(name) => name.map(|n| t.declared_time(n, file)).transpose()?,
            None => t.inferred_time(),
        };
        Ok(t)
    }

    fn name(&self) -> &str {
        &self.raw.source.table
    }

    fn array(&self, i: usize) -> &ArrayRef {
        &self.raw.columns[i].1
    }

    fn column_name(&self, i: usize) -> &str {
        &self.raw.columns[i].0
    }

    fn declared_key(&self, name: &str, file: &SchemaFile) -> Result<usize> {
        let i = column_of(&self.raw, self.name(), name, file)?;
        if !self.dtypes[i].is_key_type() {
            return Err(file.error(format!(
                "table `{}`: primary key `{name}` has type {}; keys are int64 or string",
                self.name(),
                self.dtypes[i]
            )));
        }
        self.check_key(i)?;
        Ok(i)
    }

    /// A key column has a value in every row and no value twice.
    fn check_key(&self, i: usize) -> Result<()> {
        let (table, column) = (self.name().to_string(), self.column_name(i).to_string());
        if let Some(row) = (0..self.raw.num_rows).find(|&r| self.array(i).is_null(r)) {
            let location = self.raw.source.locate(row);
            return Err(LoadError::NullKey {
                location,
                table,
                column,
            });
        }
        match self.key_values(i).and_then(|v| v.first_duplicate()) {
            Some((first, second, value)) => Err(LoadError::DuplicateKey {
                table,
                column,
                value,
                first: Box::new(self.raw.source.locate(first)),
                second: Box::new(self.raw.source.locate(second)),
            }),
            None => Ok(()),
        }
    }

    /// The best-named unique, non-null key-typed column; the first column counts as a name.
    /// A column named as this table's key (`id`, `order_id` in `orders`) that has nulls or
    /// repeats is bad data, not a hint that there is no key: that is an error.
    fn inferred_key(&self) -> Result<Option<usize>> {
        let mut candidates: Vec<(u32, usize)> = (0..self.raw.columns.len())
            .filter(|&i| self.dtypes[i].is_key_type())
            .map(|i| (infer::key_name_score(self.name(), self.column_name(i)), i))
            .filter(|&(score, i)| score > 0 || i == 0)
            .collect();
        candidates.sort_by_key(|&(score, i)| (std::cmp::Reverse(score + u32::from(i == 0)), i));
        for (score, i) in candidates {
            let strong = score >= infer::OWN_KEY_NAME;
            let nulls = self.array(i).null_count() > 0;
            if !strong && nulls {
                continue;
            }
            let unique = self
                .key_values(i)
                .is_some_and(|v| v.first_duplicate().is_none());
            if strong && (nulls || !unique) {
                self.check_key(i)?;
            }
            if unique {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn declared_time(&self, name: &str, file: &SchemaFile) -> Result<usize> {
        let i = column_of(&self.raw, self.name(), name, file)?;
        if self.dtypes[i] != DType::Timestamp {
            return Err(file.error(format!(
                "table `{}`: time column `{name}` has type {}; set its dtype to \"timestamp\"",
                self.name(),
                self.dtypes[i]
            )));
        }
        Ok(i)
    }

    fn inferred_time(&self) -> Option<usize> {
        let stamps: Vec<&str> = (0..self.dtypes.len())
            .filter(|&i| self.dtypes[i] == DType::Timestamp)
            .map(|i| self.column_name(i))
            .collect();
        let name = infer::pick_time_column(&stamps)?;
        self.raw.columns.iter().position(|(n, _)| n == name)
    }

    fn key_values(&self, i: usize) -> Option<KeyValues<'_>> {
        KeyValues::of(self.array(i).as_ref())
    }
}

fn column_of(raw: &RawTable, table: &str, name: &str, file: &SchemaFile) -> Result<usize> {
    raw.columns
        .iter()
        .position(|(n, _)| n == name)
        .ok_or_else(|| {
            let hint = suggest(name, raw.columns.iter().map(|(n, _)| n.as_str()));
            file.error(format!("table `{table}` has no column `{name}`{hint}"))
        })
}

/// Gives column `i` its type: the declared one, else the inferred one for text, else the
/// file's own. Values that do not read as the type are errors with their place.
fn type_column(raw: &RawTable, i: usize, wanted: Option<DType>) -> Result<(DType, ArrayRef)> {
    let (name, array) = &raw.columns[i];
    let own = infer::dtype_of(array.as_ref());
    let text: ArrayRef = match (as_text(array), own, wanted) {
        (Some(_), _, _) => array.clone(),
        (None, Some(d), None) => return Ok((d, array.clone())),
        (None, Some(d), Some(w)) if d == w => return Ok((d, array.clone())),
        (None, _, _) => cast(array, &DataType::Utf8).map_err(|e| LoadError::Malformed {
            location: raw.source.locate(0),
            message: format!("column `{name}` cannot be read as text: {e}"),
        })?,
    };
    let text = as_text(&text).ok_or_else(|| LoadError::Malformed {
        location: raw.source.locate(0),
        message: format!("column `{name}` is not text after conversion"),
    })?;
    let dtype = wanted.unwrap_or_else(|| infer::infer_dtype(text));
    let typed = infer::convert(text, dtype).map_err(|(row, value)| LoadError::BadValue {
        location: raw.source.locate(row),
        column: name.clone(),
        value,
        expected: infer::expected_text(dtype).to_string(),
    })?;
    Ok((dtype, typed))
}

/// Finds the foreign keys of every table, counts dangling values, sets semantic types.
fn link(typed: Vec<TypedTable>, file: &SchemaFile) -> Result<Vec<Table>> {
    let key_sets: Vec<Option<KeySet<'_>>> = typed
        .iter()
        .map(|t| t.primary_key.and_then(|k| t.key_values(k)).map(|v| v.set()))
        .collect();
    let links: Vec<Vec<(usize, usize, u64)>> = typed
        .par_iter()
        .enumerate()
        .map(
            |(a, t)| match file.table(t.name()).and_then(|o| o.foreign_keys.as_ref()) {
                Some(declared) => declared_links(&typed, &key_sets, a, declared, file),
                None => Ok(inferred_links(&typed, &key_sets, a)),
            },
        )
        .collect::<Result<_>>()?;
    drop(key_sets);
    let names: Vec<String> = typed.iter().map(|t| t.name().to_string()).collect();
    typed
        .into_iter()
        .zip(links)
        .map(|(t, fks)| finish(t, &fks, &names, file))
        .collect()
}

fn declared_links(
    typed: &[TypedTable],
    key_sets: &[Option<KeySet<'_>>],
    a: usize,
    declared: &indexmap::IndexMap<String, String>,
    file: &SchemaFile,
) -> Result<Vec<(usize, usize, u64)>> {
    let t = &typed[a];
    let mut out = Vec::new();
    for (column, target) in declared {
        let c = column_of(&t.raw, t.name(), column, file)?;
        let bad = |why: String| {
            file.error(format!(
                "table `{}`: foreign key `{column}` {why}",
                t.name()
            ))
        };
        let Some(b) = typed.iter().position(|u| u.name() == target) else {
            let hint = suggest(target, typed.iter().map(TypedTable::name));
            return Err(bad(format!(
                "references `{target}`, which is not a table{hint}"
            )));
        };
        let (Some(pk), Some(keys)) = (typed[b].primary_key, &key_sets[b]) else {
            return Err(bad(format!(
                "references `{target}`, which has no primary key"
            )));
        };
        if t.dtypes[c] != typed[b].dtypes[pk] {
            return Err(bad(format!(
                "has type {} but `{target}.{}` has type {}",
                t.dtypes[c],
                typed[b].column_name(pk),
                typed[b].dtypes[pk]
            )));
        }
        let dangling = t
            .key_values(c)
            .map_or(0, |v| v.containment(keys).dangling());
        out.push((c, b, dangling));
    }
    Ok(out)
}

/// A column links to the table whose key its name points at (`customer_id` → `customers`)
/// when most of its distinct values are keys there; without such a name, a text column
/// links where nearly all its values are keys (`origin` → `airports.faa`).
fn inferred_links(
    typed: &[TypedTable],
    key_sets: &[Option<KeySet<'_>>],
    a: usize,
) -> Vec<(usize, usize, u64)> {
    let t = &typed[a];
    let mut out = Vec::new();
    for c in 0..t.dtypes.len() {
        let Some(values) = t.key_values(c) else {
            continue;
        };
        let mut best: Option<((u32, u64), usize, u64)> = None;
        // The column's distinct values, counted once for all the tables it may link to.
        let mut counts = None;
        for (b, keys) in key_sets.iter().enumerate() {
            let (Some(keys), Some(pk)) = (keys, typed[b].primary_key) else {
                continue;
            };
            if b == a || t.dtypes[c] != typed[b].dtypes[pk] {
                continue;
            }
            let score = infer::reference_name_score(
                t.column_name(c),
                typed[b].name(),
                typed[b].column_name(pk),
            );
            let is_own_key = t.primary_key == Some(c);
            if (score == 0 && (t.dtypes[c] != DType::String || is_own_key))
                || (is_own_key && score < 2)
            {
                continue;
            }
            let m = counts
                .get_or_insert_with(|| values.counts())
                .containment(keys);
            let accepted = match score {
                0 => m.row_share() >= 0.9 && m.distinct_share() >= 0.8,
                1 => m.distinct_share() >= 0.8,
                _ => m.distinct_share() >= 0.5,
            };
            let rank = (score, m.rows_found);
            if accepted && best.as_ref().is_none_or(|(r, _, _)| rank > *r) {
                best = Some((rank, b, m.dangling()));
            }
        }
        if let Some((_, b, dangling)) = best {
            out.push((c, b, dangling));
        }
    }
    out
}

/// Builds the final table: semantic types (keys are ids), schema and record batch.
fn finish(
    t: TypedTable,
    links: &[(usize, usize, u64)],
    names: &[String],
    file: &SchemaFile,
) -> Result<Table> {
    let ov = file.table(t.name()).unwrap_or(&NO_OVERRIDE);
    let is_key = |i: usize| t.primary_key == Some(i) || links.iter().any(|l| l.0 == i);
    let columns: Vec<ColumnSchema> = (0..t.dtypes.len())
        .map(|i| {
            let name = t.column_name(i).to_string();
            let declared = ov.columns.get(&name).and_then(|c| c.stype);
            let stype = declared.unwrap_or_else(|| {
                if is_key(i) {
                    SType::Id
                } else {
                    infer::infer_stype(t.array(i).as_ref())
                }
            });
            ColumnSchema {
                name,
                dtype: t.dtypes[i],
                stype,
            }
        })
        .collect();
    let schema = TableSchema {
        name: t.name().to_string(),
        primary_key: t.primary_key.map(|i| t.column_name(i).to_string()),
        time_column: t.time_column.map(|i| t.column_name(i).to_string()),
        foreign_keys: links
            .iter()
            .map(|&(c, b, _)| ForeignKey {
                column: t.column_name(c).to_string(),
                references: names[b].clone(),
            })
            .collect(),
        columns,
    };
    let arrays: Vec<ArrayRef> = t.raw.columns.iter().map(|(_, a)| a.clone()).collect();
    let batch = RecordBatch::try_new_with_options(
        Arc::new(arrow_schema(&schema)),
        arrays,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(t.raw.num_rows)),
    )
    .map_err(|e| LoadError::Malformed {
        location: t.raw.source.locate(0),
        message: format!("cannot assemble table `{}`: {e}", schema.name),
    })?;
    Ok(Table {
        schema,
        batch,
        source: t.raw.source,
        dangling: links.iter().map(|l| l.2).collect(),
    })
}
