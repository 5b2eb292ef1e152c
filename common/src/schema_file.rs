//! `schema.toml`: the user's word on anything inference guessed.
//!
//! ```toml
//! [tables.flights]
//! primary_key = ""                  # "" means: no primary key
//! time_column = "time_hour"
//! foreign_keys = { carrier = "airlines", origin = "airports", dest = "airports" }
//!
//! [tables.flights.columns]
//! flight = { dtype = "string", stype = "categorical" }
//! ```
//! Every key is optional; what is given replaces the guess (`foreign_keys` replaces all
//! of the table's inferred links, in the order written). Unknown keys, tables and columns
//! are errors.

use indexmap::IndexMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{LoadError, Result};
use crate::schema::{DType, DatabaseSchema, SType};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnOverride {
    pub dtype: Option<DType>,
    pub stype: Option<SType>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableOverride {
    pub primary_key: Option<String>,
    pub time_column: Option<String>,
    #[serde(default)]
    pub columns: IndexMap<String, ColumnOverride>,
    pub foreign_keys: Option<IndexMap<String, String>>,
}

/// A parsed `schema.toml` and where it came from, for error messages.
#[derive(Debug, Default)]
pub struct SchemaFile {
    pub path: PathBuf,
    pub tables: IndexMap<String, TableOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    tables: IndexMap<String, TableOverride>,
}

/// `Some(None)` for `""` (explicitly none), `Some(Some(name))` for a name, `None` if unset.
pub fn optional_name(value: &Option<String>) -> Option<Option<&str>> {
    value
        .as_deref()
        .map(|v| if v.is_empty() { None } else { Some(v) })
}

impl SchemaFile {
    pub fn read(path: &Path) -> Result<SchemaFile> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
        let doc: Document = toml::from_str(&text).map_err(|e| LoadError::Schema {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        Ok(SchemaFile {
            path: path.to_path_buf(),
            tables: doc.tables,
        })
    }

    pub fn table(&self, name: &str) -> Option<&TableOverride> {
        self.tables.get(name)
    }

    pub fn error(&self, message: String) -> LoadError {
        LoadError::Schema {
            file: self.path.clone(),
            message,
        }
    }
}

impl SchemaFile {
    /// A whole schema written in this format, with no data behind it (every column with
    /// its dtype and stype), in the order written.
    pub fn parse_schema(text: &str) -> std::result::Result<DatabaseSchema, String> {
        let doc: Document = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut tables = Vec::new();
        for (name, t) in doc.tables {
            let mut columns = Vec::new();
            for (column, c) in &t.columns {
                let (Some(dtype), Some(stype)) = (c.dtype, c.stype) else {
                    return Err(format!(
                        "table `{name}`, column `{column}`: give both dtype and stype"
                    ));
                };
                columns.push(crate::schema::ColumnSchema {
                    name: column.clone(),
                    dtype,
                    stype,
                });
            }
            let own = |v: &Option<String>| optional_name(v).flatten().map(str::to_string);
            tables.push(crate::schema::TableSchema {
                name,
                primary_key: own(&t.primary_key),
                time_column: own(&t.time_column),
                foreign_keys: t
                    .foreign_keys
                    .iter()
                    .flatten()
                    .map(|(c, r)| crate::schema::ForeignKey {
                        column: c.clone(),
                        references: r.clone(),
                    })
                    .collect(),
                columns,
            });
        }
        Ok(DatabaseSchema { tables })
    }
}

/// Closest name to `wanted` among `names` by edit distance, for "did you mean" hints.
pub fn suggest<'a>(wanted: &str, names: impl IntoIterator<Item = &'a str>) -> String {
    let best = names
        .into_iter()
        .map(|n| (edit_distance(&wanted.to_lowercase(), &n.to_lowercase()), n))
        .min();
    match best {
        Some((d, n)) if d <= wanted.len().max(3) / 2 => format!("; did you mean `{n}`?"),
        _ => String::new(),
    }
}

/// Levenshtein distance over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (up + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = up;
        }
    }
    row[b.len()]
}

fn key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        toml::Value::String(name.to_string()).to_string()
    }
}

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// The schema as an editable `schema.toml` that reads back to the same schema.
pub fn to_toml(schema: &DatabaseSchema) -> String {
    let mut out = String::from(
        "# relgraph schema: edit, then pass with --schema FILE or save as schema.toml in the data directory.\n\
         # primary_key / time_column = \"\" means none; foreign_keys replaces the inferred links.\n",
    );
    for t in &schema.tables {
        let name = key(&t.name);
        let _ = writeln!(out, "\n[tables.{name}]");
        let _ = writeln!(
            out,
            "primary_key = {}",
            quoted(t.primary_key.as_deref().unwrap_or(""))
        );
        let _ = writeln!(
            out,
            "time_column = {}",
            quoted(t.time_column.as_deref().unwrap_or(""))
        );
        let links: Vec<String> = t
            .foreign_keys
            .iter()
            .map(|f| format!("{} = {}", key(&f.column), quoted(&f.references)))
            .collect();
        let _ = writeln!(out, "foreign_keys = {{ {} }}", links.join(", "));
        let _ = writeln!(out, "\n[tables.{name}.columns]");
        for c in &t.columns {
            let _ = writeln!(
                out,
                "{} = {{ dtype = \"{}\", stype = \"{}\" }}",
                key(&c.name),
                c.dtype,
                c.stype
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("amout", "amount"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            suggest("amout", ["price", "amount"]),
            "; did you mean `amount`?"
        );
        assert_eq!(suggest("zzzzzz", ["price", "amount"]), "");
    }

    #[test]
    fn unknown_keys_are_errors_with_a_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("schema.toml");
        std::fs::write(&path, "[tables.a]\nprimary_kee = \"id\"\n").expect("write");
        let err = SchemaFile::read(&path)
            .expect_err("unknown key")
            .to_string();
        assert!(
            err.contains("schema.toml") && err.contains("primary_kee"),
            "{err}"
        );
        assert!(err.contains("line 2"), "{err}");
    }
}
