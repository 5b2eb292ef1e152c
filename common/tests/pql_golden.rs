//! Golden files for PQL: `testdata/pql/*.txt`, read by this one data-driven runner.
//!
//! A file is a series of blocks. `schema NAME` selects `testdata/schemas/NAME.toml` for the
//! blocks after it. A case is the query text, a line `----`, then the expected output up
//! to a blank line: the validated task in words, or the error as the user sees it.
//! `REWRITE=1 cargo test --test pql_golden` rewrites the expected outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use relgraph_common::pql::compile;
use relgraph_common::schema::DatabaseSchema;
use relgraph_common::schema_file::SchemaFile;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn schema(name: &str, cache: &mut HashMap<String, DatabaseSchema>) -> DatabaseSchema {
    cache
        .entry(name.to_string())
        .or_insert_with(|| {
            let path = testdata().join("schemas").join(format!("{name}.toml"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            SchemaFile::parse_schema(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .clone()
}

fn run(query: &str, schema: &DatabaseSchema) -> String {
    match compile(query, schema) {
        Ok(task) => task.describe(schema).trim_end().to_string(),
        Err(e) => format!("error: {}", e.render(query)),
    }
}

/// Runs one file; returns it with the actual outputs and the number of mismatches.
fn run_file(
    path: &Path,
    cache: &mut HashMap<String, DatabaseSchema>,
) -> (String, Vec<String>, usize) {
    let text = std::fs::read_to_string(path).expect("read golden file");
    let lines: Vec<&str> = text.lines().collect();
    let (mut out, mut failures, mut cases) = (String::new(), Vec::new(), 0);
    let mut current: Option<DatabaseSchema> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(name) = line.strip_prefix("schema ") {
            current = Some(schema(name.trim(), cache));
            out.push_str(line);
            out.push('\n');
            i += 1;
            continue;
        }
        if line.trim().is_empty() || line.starts_with("//") {
            out.push_str(line);
            out.push('\n');
            i += 1;
            continue;
        }
        let start = i;
        while i < lines.len() && lines[i] != "----" {
            i += 1;
        }
        let query = lines[start..i].join("\n");
        i += 1;
        let expected_start = i;
        while i < lines.len() && !lines[i].trim().is_empty() {
            i += 1;
        }
        let expected = lines[expected_start.min(lines.len())..i].join("\n");
        let schema = current
            .as_ref()
            .unwrap_or_else(|| panic!("{}: a case before any `schema` line", path.display()));
        let actual = run(&query, schema);
        cases += 1;
        if actual != expected {
            failures.push(format!(
                "{}:{}:\n{query}\n--- expected\n{expected}\n--- actual\n{actual}\n",
                path.display(),
                start + 1
            ));
        }
        out.push_str(&format!("{query}\n----\n{actual}\n"));
    }
    (out, failures, cases)
}

#[test]
fn golden_files() {
    let rewrite = std::env::var_os("REWRITE").is_some();
    let mut cache = HashMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(testdata().join("pql"))
        .expect("testdata/pql")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let (mut all_failures, mut total, mut errors) = (Vec::new(), 0, 0);
    for path in &files {
        let (out, failures, cases) = run_file(path, &mut cache);
        total += cases;
        errors += out.matches("\n----\nerror: ").count();
        if rewrite {
            std::fs::write(path, out).expect("rewrite golden file");
        } else {
            all_failures.extend(failures);
        }
    }
    assert!(
        all_failures.is_empty(),
        "{} golden case(s) differ:\n{}",
        all_failures.len(),
        all_failures.join("\n")
    );
    assert!(
        total >= 60 && errors >= 25,
        "golden files hold {total} cases, {errors} errors"
    );
}
