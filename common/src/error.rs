//! Errors of loading a database: each says what failed, where, and what was expected.

use std::fmt;
use std::path::PathBuf;

/// Where a value sits in the input: a CSV line or a Parquet row, both 1-based.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Line { file: PathBuf, line: u64 },
    Row { file: PathBuf, row: u64 },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line { file, line } => write!(f, "{}:{line}", file.display()),
            Location::Row { file, row } => write!(f, "{}, row {row}", file.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{} is not a database directory: no .csv, .csv.gz or .parquet table files in it", dir.display())]
    NoTables { dir: PathBuf },

    #[error("table `{table}` is given twice: {} and {}", first.display(), second.display())]
    DuplicateTable {
        table: String,
        first: PathBuf,
        second: PathBuf,
    },

    #[error("{}: the files of table folder `{table}` mix formats ({} and {})", dir.display(), first.display(), second.display())]
    MixedFormats {
        table: String,
        dir: PathBuf,
        first: PathBuf,
        second: PathBuf,
    },

    #[error("{}: no header row (the first line must name the columns)", file.display())]
    NoHeader { file: PathBuf },

    #[error("{}:1: header column {position} {problem}", file.display())]
    BadHeader {
        file: PathBuf,
        position: usize,
        problem: String,
    },

    #[error("{}: columns differ from the table's first file {}: {detail}", file.display(), first.display())]
    PartMismatch {
        file: PathBuf,
        first: PathBuf,
        detail: String,
    },

    #[error("{location}: expected {expected} fields as in the header, found {found}")]
    Ragged {
        location: Location,
        expected: u64,
        found: u64,
    },

    #[error("{location}: {message}")]
    Malformed { location: Location, message: String },

    #[error("{location}: column `{column}`: cannot read `{value}` as {expected}")]
    BadValue {
        location: Location,
        column: String,
        value: String,
        expected: String,
    },

    #[error(
        "{location}: column `{column}` of table `{table}` is null, but it is the primary key (fix the row, or name another key with primary_key in schema.toml)"
    )]
    NullKey {
        location: Location,
        table: String,
        column: String,
    },

    #[error(
        "{second}: duplicate primary key `{value}` in column `{column}` of table `{table}` (first at {first}); fix the rows, or name another key with primary_key in schema.toml"
    )]
    DuplicateKey {
        table: String,
        column: String,
        value: String,
        first: Box<Location>,
        second: Box<Location>,
    },

    #[error("{}: column `{column}` has Parquet type {found}, which relgraph cannot load", file.display())]
    UnsupportedType {
        file: PathBuf,
        column: String,
        found: String,
    },

    #[error(
        "table `{table}`: column `{column}` holds more than 2 GiB of text, more than one column can hold"
    )]
    TooLarge { table: String, column: String },

    #[error("{}: {message}", file.display())]
    Schema { file: PathBuf, message: String },
}

impl LoadError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.into(),
            cause: source,
        }
    }
}

pub type Result<T, E = LoadError> = std::result::Result<T, E>;
