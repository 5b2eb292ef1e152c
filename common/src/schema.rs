//! The schema of a relational database: tables, typed columns, keys and time columns.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a column's values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Bool,
    Int64,
    Float64,
    String,
    /// Seconds since the Unix epoch, UTC.
    Timestamp,
}

/// What a column's values mean, which decides how the model encodes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SType {
    Numerical,
    Categorical,
    /// Several categories in one value, separated by `|` or `;`.
    Multicategorical,
    Text,
    Timestamp,
    /// A key: identifies a row; never encoded as a feature.
    Id,
}

impl DType {
    pub const ALL: [DType; 5] = [
        DType::Bool,
        DType::Int64,
        DType::Float64,
        DType::String,
        DType::Timestamp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::Int64 => "int64",
            DType::Float64 => "float64",
            DType::String => "string",
            DType::Timestamp => "timestamp",
        }
    }

    /// Whether a column of this type can hold keys.
    pub fn is_key_type(self) -> bool {
        matches!(self, DType::Int64 | DType::String)
    }
}

impl SType {
    pub const ALL: [SType; 6] = [
        SType::Numerical,
        SType::Categorical,
        SType::Multicategorical,
        SType::Text,
        SType::Timestamp,
        SType::Id,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SType::Numerical => "numerical",
            SType::Categorical => "categorical",
            SType::Multicategorical => "multicategorical",
            SType::Text => "text",
            SType::Timestamp => "timestamp",
            SType::Id => "id",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for SType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    pub dtype: DType,
    pub stype: SType,
}

/// A column whose values are primary keys of another table (or of its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKey {
    pub column: String,
    pub references: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: String,
    pub columns: Vec<ColumnSchema>,
    pub primary_key: Option<String>,
    pub time_column: Option<String>,
    pub foreign_keys: Vec<ForeignKey>,
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// A table without a time column is static: its rows are visible at every anchor time.
    pub fn is_static(&self) -> bool {
        self.time_column.is_none()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseSchema {
    pub tables: Vec<TableSchema>,
}

impl DatabaseSchema {
    pub fn table(&self, name: &str) -> Option<&TableSchema> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Lines describing every difference from `other` (empty when equal), for tests and
    /// for the demo's check that inference recovers the generated schema.
    pub fn diff(&self, other: &DatabaseSchema) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.tables {
            let Some(o) = other.table(&t.name) else {
                out.push(format!("table `{}` only on the left", t.name));
                continue;
            };
            diff_table(t, o, &mut out);
        }
        for o in &other.tables {
            if self.table(&o.name).is_none() {
                out.push(format!("table `{}` only on the right", o.name));
            }
        }
        out
    }
}

fn diff_table(t: &TableSchema, o: &TableSchema, out: &mut Vec<String>) {
    let name = &t.name;
    if t.primary_key != o.primary_key {
        out.push(format!(
            "{name}: primary key {:?} vs {:?}",
            t.primary_key, o.primary_key
        ));
    }
    if t.time_column != o.time_column {
        out.push(format!(
            "{name}: time column {:?} vs {:?}",
            t.time_column, o.time_column
        ));
    }
    for c in &t.columns {
        match o.column(&c.name) {
            None => out.push(format!("{name}.{}: only on the left", c.name)),
            Some(oc) if oc != c => out.push(format!(
                "{name}.{}: {} {} vs {} {}",
                c.name, c.dtype, c.stype, oc.dtype, oc.stype
            )),
            Some(_) => {}
        }
    }
    for c in &o.columns {
        if t.column(&c.name).is_none() {
            out.push(format!("{name}.{}: only on the right", c.name));
        }
    }
    let mut left: Vec<_> = t
        .foreign_keys
        .iter()
        .map(|f| (&f.column, &f.references))
        .collect();
    let mut right: Vec<_> = o
        .foreign_keys
        .iter()
        .map(|f| (&f.column, &f.references))
        .collect();
    left.sort();
    right.sort();
    if left != right {
        out.push(format!("{name}: foreign keys {left:?} vs {right:?}"));
    }
}
