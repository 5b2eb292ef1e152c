//! Finding the tables of a database directory and reading their files into raw columns.
//!
//! A table is a file `NAME.csv`, `NAME.csv.gz` or `NAME.parquet`, or a folder `NAME/` of
//! part files of one of those formats. Names starting with `.` or `_` are ignored (that is
//! where generators put ground truth and where tools put markers); other files are listed
//! as skipped so nothing disappears silently.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray, StringBuilder, TimestampSecondArray};
use arrow::compute::concat;
use arrow::datatypes::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;

use crate::error::{LoadError, Location, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    CsvGz,
    Parquet,
}

impl Format {
    fn of(path: &Path) -> Option<(Format, String)> {
        let name = path.file_name()?.to_str()?;
        for (suffix, format) in [
            (".csv.gz", Format::CsvGz),
            (".csv", Format::Csv),
            (".parquet", Format::Parquet),
        ] {
            if let Some(stem) = name.strip_suffix(suffix)
                && !stem.is_empty()
            {
                return Some((format, stem.to_string()));
            }
        }
        None
    }
}

/// The files of one table and how many rows each held, to turn a row back into a place.
#[derive(Clone, Debug)]
pub struct TableSource {
    pub table: String,
    pub format: Format,
    pub files: Vec<PathBuf>,
    pub rows_per_file: Vec<u64>,
}

/// What a database directory holds.
#[derive(Debug)]
pub struct Listing {
    pub sources: Vec<TableSource>,
    /// Files and folders that are not tables (READMEs, unknown formats).
    pub skipped: Vec<PathBuf>,
}

fn hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.') || n.starts_with('_'))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LoadError::io(dir, e))? {
        let path = entry.map_err(|e| LoadError::io(dir, e))?.path();
        if !hidden(&path) {
            entries.push(path);
        }
    }
    entries.sort();
    Ok(entries)
}

/// Lists the tables of `dir`; `schema.toml` is neither a table nor skipped.
pub fn list(dir: &Path) -> Result<Listing> {
    let mut sources: Vec<TableSource> = Vec::new();
    let mut skipped = Vec::new();
    for path in sorted_entries(dir)? {
        let found = if path.is_dir() {
            folder_source(&path)?
        } else {
            file_source(&path)
        };
        let Some(source) = found else {
            if path.file_name().is_none_or(|n| n != "schema.toml") {
                skipped.push(path);
            }
            continue;
        };
        if let Some(prev) = sources.iter().find(|s| s.table == source.table) {
            return Err(LoadError::DuplicateTable {
                table: source.table,
                first: prev.files[0].clone(),
                second: path,
            });
        }
        sources.push(source);
    }
    if sources.is_empty() {
        return Err(LoadError::NoTables {
            dir: dir.to_path_buf(),
        });
    }
    Ok(Listing { sources, skipped })
}

/// A stamp of what `dir` holds: every table file's name, size and modification time, and
/// those of `schema.toml` and of `extra` files (a schema given apart). It changes when a
/// file is rewritten, added or removed (as far as sizes and times tell); reading the
/// files again is what would tell more.
pub fn stamp(dir: &Path, extra: &[&Path]) -> Result<u64> {
    let listing = list(dir)?;
    let schema = dir.join("schema.toml");
    let files = listing
        .sources
        .iter()
        .flat_map(|s| s.files.iter().map(PathBuf::as_path))
        .chain(schema.exists().then_some(schema.as_path()))
        .chain(extra.iter().copied());
    let mut h = crate::hash::FNV_BASIS;
    for file in files {
        let meta = std::fs::metadata(file).map_err(|e| LoadError::io(file, e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let name = file.strip_prefix(dir).unwrap_or(file);
        h = crate::hash::fnv1a(name.to_string_lossy().bytes(), h);
        h = crate::hash::fnv1a(meta.len().to_le_bytes(), h);
        h = crate::hash::fnv1a(modified.to_le_bytes(), h);
    }
    Ok(h)
}

fn file_source(path: &Path) -> Option<TableSource> {
    let (format, table) = Format::of(path)?;
    Some(TableSource {
        table,
        format,
        files: vec![path.to_path_buf()],
        rows_per_file: vec![],
    })
}

fn folder_source(dir: &Path) -> Result<Option<TableSource>> {
    let Some(table) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
        return Ok(None);
    };
    let mut files = Vec::new();
    let mut format = None;
    for path in sorted_entries(dir)? {
        let Some((f, _)) = Format::of(&path) else {
            continue;
        };
        match format {
            None => format = Some(f),
            Some(g) if g != f => {
                return Err(LoadError::MixedFormats {
                    table,
                    dir: dir.to_path_buf(),
                    first: files.swap_remove(0),
                    second: path,
                });
            }
            Some(_) => {}
        }
        files.push(path);
    }
    Ok(format.map(|format| TableSource {
        table,
        format,
        files,
        rows_per_file: vec![],
    }))
}

/// A table as read: column names and arrays, strings where the file has no types.
#[derive(Debug)]
pub struct RawTable {
    pub source: TableSource,
    pub columns: Vec<(String, ArrayRef)>,
    pub num_rows: usize,
}

impl TableSource {
    /// Reads every file of the table, in parallel, and concatenates them.
    pub fn read(mut self) -> Result<RawTable> {
        let parts: Vec<Vec<(String, ArrayRef)>> = self
            .files
            .par_iter()
            .map(|file| match self.format {
                Format::Parquet => read_parquet(file),
                Format::Csv | Format::CsvGz => read_csv(file, self.format),
            })
            .collect::<Result<_>>()?;
        self.rows_per_file = parts
            .iter()
            .map(|cols| cols.first().map_or(0, |(_, a)| a.len() as u64))
            .collect();
        let first = &parts[0];
        let mut columns = Vec::with_capacity(first.len());
        for (i, (name, array)) in first.iter().enumerate() {
            let mut arrays: Vec<&dyn Array> = vec![array.as_ref()];
            for (part, file) in parts.iter().zip(&self.files).skip(1) {
                match part.get(i) {
                    Some((n, a)) if n == name && a.data_type() == array.data_type() => {
                        arrays.push(a.as_ref())
                    }
                    other => {
                        let detail = match other {
                            Some((n, a)) => format!(
                                "column {} is `{n}` ({}), expected `{name}` ({})",
                                i + 1,
                                a.data_type(),
                                array.data_type()
                            ),
                            None => format!("column {} (`{name}`) is missing", i + 1),
                        };
                        return Err(LoadError::PartMismatch {
                            file: file.clone(),
                            first: self.files[0].clone(),
                            detail,
                        });
                    }
                }
            }
            let merged = if arrays.len() == 1 {
                array.clone()
            } else {
                concat(&arrays).map_err(|_| LoadError::TooLarge {
                    table: self.table.clone(),
                    column: name.clone(),
                })?
            };
            columns.push((name.clone(), merged));
        }
        if let Some((extra, file)) = parts
            .iter()
            .zip(&self.files)
            .find(|(p, _)| p.len() > first.len())
        {
            return Err(LoadError::PartMismatch {
                file: file.clone(),
                first: self.files[0].clone(),
                detail: format!(
                    "it has {} columns, the first file {}",
                    extra.len(),
                    first.len()
                ),
            });
        }
        let num_rows = self.rows_per_file.iter().sum::<u64>() as usize;
        Ok(RawTable {
            source: self,
            columns,
            num_rows,
        })
    }

    /// The place of the table's `row`-th row (0-based over all its files).
    pub fn locate(&self, row: usize) -> Location {
        let mut row = row as u64;
        for (file, &n) in self.files.iter().zip(&self.rows_per_file) {
            if row < n {
                return match self.format {
                    Format::Parquet => Location::Row {
                        file: file.clone(),
                        row: row + 1,
                    },
                    Format::Csv | Format::CsvGz => Location::Line {
                        file: file.clone(),
                        line: csv_line_of(file, self.format, row).unwrap_or(row + 2),
                    },
                };
            }
            row -= n;
        }
        Location::Row {
            file: self.files[0].clone(),
            row: row + 1,
        }
    }
}

fn open_csv(file: &Path, format: Format) -> Result<csv::Reader<Box<dyn Read + Send>>> {
    let f = File::open(file).map_err(|e| LoadError::io(file, e))?;
    let reader: Box<dyn Read + Send> = match format {
        Format::CsvGz => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))),
        _ => Box::new(f),
    };
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .buffer_capacity(1 << 20)
        .from_reader(reader))
}

/// The line where record `row` starts, found by reading the file again (errors only).
fn csv_line_of(file: &Path, format: Format, row: u64) -> Option<u64> {
    let mut reader = open_csv(file, format).ok()?;
    let mut record = csv::ByteRecord::new();
    for _ in 0..=row {
        if !reader.read_byte_record(&mut record).ok()? {
            return None;
        }
    }
    record.position().map(csv::Position::line)
}

fn csv_error(file: &Path, err: csv::Error) -> LoadError {
    let line = err.position().map_or(0, csv::Position::line);
    let location = Location::Line {
        file: file.to_path_buf(),
        line,
    };
    match err.into_kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => LoadError::Ragged {
            location,
            expected: expected_len,
            found: len,
        },
        csv::ErrorKind::Io(e) => LoadError::io(file, e),
        other => LoadError::Malformed {
            location,
            message: format!("{other:?}"),
        },
    }
}

/// Whether a CSV field is null: empty or `NA`.
pub fn is_null_text(field: &[u8]) -> bool {
    field.is_empty() || field == b"NA"
}

const MAX_TEXT_BYTES: usize = i32::MAX as usize;

fn read_csv(file: &Path, format: Format) -> Result<Vec<(String, ArrayRef)>> {
    let mut reader = open_csv(file, format)?;
    let header = reader
        .byte_headers()
        .map_err(|e| csv_error(file, e))?
        .clone();
    if header.is_empty() {
        return Err(LoadError::NoHeader {
            file: file.to_path_buf(),
        });
    }
    let names = header_names(file, &header)?;
    let mut builders: Vec<StringBuilder> = names.iter().map(|_| StringBuilder::new()).collect();
    let mut bytes = vec![0usize; names.len()];
    let mut record = csv::ByteRecord::new();
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| csv_error(file, e))?
    {
        for (i, field) in record.iter().enumerate() {
            if is_null_text(field) {
                builders[i].append_null();
                continue;
            }
            let text = std::str::from_utf8(field).map_err(|_| LoadError::Malformed {
                location: Location::Line {
                    file: file.to_path_buf(),
                    line: record.position().map_or(0, csv::Position::line),
                },
                message: format!("column `{}` is not valid UTF-8", names[i]),
            })?;
            bytes[i] += text.len();
            if bytes[i] > MAX_TEXT_BYTES {
                return Err(LoadError::TooLarge {
                    table: file.display().to_string(),
                    column: names[i].clone(),
                });
            }
            builders[i].append_value(text);
        }
    }
    Ok(names
        .into_iter()
        .zip(builders)
        .map(|(name, mut b)| (name, Arc::new(b.finish()) as ArrayRef))
        .collect())
}

fn header_names(file: &Path, header: &csv::ByteRecord) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::with_capacity(header.len());
    for (i, field) in header.iter().enumerate() {
        let bad = |problem: String| LoadError::BadHeader {
            file: file.to_path_buf(),
            position: i + 1,
            problem,
        };
        let name = std::str::from_utf8(field)
            .map_err(|_| bad("is not valid UTF-8".into()))?
            .trim()
            .to_string();
        if name.is_empty() {
            return Err(bad("has no name".into()));
        }
        if let Some(j) = names.iter().position(|n| *n == name) {
            return Err(bad(format!("`{name}` repeats column {}", j + 1)));
        }
        names.push(name);
    }
    Ok(names)
}

fn read_parquet(file: &Path) -> Result<Vec<(String, ArrayRef)>> {
    let parquet_err = |e: &dyn std::fmt::Display| LoadError::Malformed {
        location: Location::Row {
            file: file.to_path_buf(),
            row: 0,
        },
        message: format!("not a readable Parquet file: {e}"),
    };
    let f = File::open(file).map_err(|e| LoadError::io(file, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| parquet_err(&e))?;
    let schema = builder.schema().clone();
    let reader = builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| parquet_err(&e))?;
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(batch.map_err(|e| parquet_err(&e))?);
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
        let array = if parts.is_empty() {
            arrow::array::new_empty_array(field.data_type())
        } else {
            concat(&parts).map_err(|e| parquet_err(&e))?
        };
        let array = canonical(&array).ok_or_else(|| LoadError::UnsupportedType {
            file: file.to_path_buf(),
            column: field.name().clone(),
            found: field.data_type().to_string(),
        })?;
        columns.push((field.name().clone(), array));
    }
    Ok(columns)
}

/// Converts a typed Arrow array to relgraph's storage type for it; `None` if unsupported.
fn canonical(array: &ArrayRef) -> Option<ArrayRef> {
    use arrow::compute::kernels::cast::{CastOptions, cast_with_options};
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let to = |t: &DataType| cast_with_options(array, t, &strict).ok();
    let ticks = |to_seconds: &dyn Fn(i64) -> i64| -> Option<ArrayRef> {
        let raw = to(&DataType::Int64)?;
        let ints = raw.as_any().downcast_ref::<Int64Array>()?;
        let seconds: TimestampSecondArray = ints.iter().map(|v| v.map(to_seconds)).collect();
        Some(Arc::new(seconds))
    };
    match array.data_type() {
        DataType::Boolean | DataType::Int64 | DataType::Float64 | DataType::Utf8 => {
            Some(array.clone())
        }
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => to(&DataType::Int64),
        DataType::Float16 | DataType::Float32 | DataType::Decimal128(..) => to(&DataType::Float64),
        DataType::LargeUtf8 | DataType::Utf8View => to(&DataType::Utf8),
        DataType::Dictionary(_, value) if value.is_string() => to(&DataType::Utf8),
        DataType::Date32 => ticks(&|days| days * crate::time::DAY),
        DataType::Date64 => ticks(&|ms| ms.div_euclid(1_000)),
        DataType::Timestamp(unit, _) => {
            let per_second = match unit {
                TimeUnit::Second => 1,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond => 1_000_000,
                TimeUnit::Nanosecond => 1_000_000_000,
            };
            ticks(&|t: i64| t.div_euclid(per_second))
        }
        _ => None,
    }
}

/// The strings of a raw column, if it has no type yet.
pub fn as_text(array: &ArrayRef) -> Option<&StringArray> {
    array.as_any().downcast_ref::<StringArray>()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stamp_changes_with_table_files_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text);
        write("users.csv", "user_id\n1\n2\n").expect("write");
        std::fs::create_dir(dir.path().join("orders")).expect("mkdir");
        write("orders/part-0.csv", "order_id,user_id\n1,1\n").expect("write");
        let stamp = || super::stamp(dir.path(), &[]).expect("stamp");
        let first = stamp();
        assert_eq!(stamp(), first);
        // Not a table: the database is the same.
        write("README.md", "notes").expect("write");
        assert_eq!(stamp(), first);
        // A part file more, a table rewritten, a schema file: each is another database.
        write("orders/part-1.csv", "order_id,user_id\n2,2\n").expect("write");
        let second = stamp();
        assert_ne!(second, first);
        write("users.csv", "user_id\n1\n2\n3\n").expect("write");
        let third = stamp();
        assert_ne!(third, second);
        write("schema.toml", "").expect("write");
        assert_ne!(stamp(), third);
    }
}
