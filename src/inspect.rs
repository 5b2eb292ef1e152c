//! `relgraph inspect`: what loading a directory finds, as text, JSON or schema.toml.

use std::path::Path;

use anyhow::Result;
use relgraph_common::{Database, schema_file};
use serde_json::json;

pub fn run(dir: &Path, schema: Option<&Path>, json: bool, emit_schema: bool) -> Result<()> {
    let db = Database::load(dir, schema)?;
    if emit_schema {
        print!("{}", schema_file::to_toml(&db.schema()));
    } else if json {
        println!("{}", serde_json::to_string_pretty(&to_json(&db))?);
    } else {
        print!("{}", to_text(&db));
    }
    Ok(())
}

pub fn to_json(db: &Database) -> serde_json::Value {
    let tables: Vec<_> = db
        .tables
        .iter()
        .map(|t| {
            let s = &t.schema;
            json!({
                "name": s.name,
                "rows": t.num_rows(),
                "primary_key": s.primary_key,
                "time_column": s.time_column,
                "columns": s.columns.iter().map(|c| json!({
                    "name": c.name, "dtype": c.dtype, "stype": c.stype,
                })).collect::<Vec<_>>(),
                "foreign_keys": s.foreign_keys.iter().zip(&t.dangling).map(|(f, d)| json!({
                    "column": f.column, "references": f.references, "dangling": d,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let skipped: Vec<String> = db.skipped.iter().map(|p| p.display().to_string()).collect();
    json!({ "tables": tables, "skipped": skipped })
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn to_text(db: &Database) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let rows: usize = db.tables.iter().map(|t| t.num_rows()).sum();
    let _ = writeln!(
        out,
        "{}: {} tables, {} rows",
        db.dir.display(),
        db.tables.len(),
        thousands(rows as u64)
    );
    for p in &db.skipped {
        let _ = writeln!(out, "  (skipped {}: not a table file)", p.display());
    }
    for t in &db.tables {
        let s = &t.schema;
        let _ = writeln!(
            out,
            "\n{}  {} rows  key: {}  time: {}",
            s.name,
            thousands(t.num_rows() as u64),
            s.primary_key.as_deref().unwrap_or("-"),
            s.time_column.as_deref().unwrap_or("- (static)")
        );
        let width = s.columns.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &s.columns {
            let _ = writeln!(
                out,
                "  {:width$}  {:9}  {}",
                c.name,
                c.dtype.name(),
                c.stype.name()
            );
        }
        for (f, d) in s.foreign_keys.iter().zip(&t.dangling) {
            let _ = writeln!(
                out,
                "  link {} -> {}  ({} dangling)",
                f.column,
                f.references,
                thousands(*d)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(336_776), "336,776");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }
}
