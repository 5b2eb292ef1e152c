#![no_main]
//! Any bytes through the PQL lexer, parser, validator and error renderer: no panics.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relgraph_common::DatabaseSchema;
use relgraph_common::pql::compile;
use relgraph_common::schema_file::SchemaFile;

static SCHEMA: OnceLock<Option<DatabaseSchema>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let schema = SCHEMA.get_or_init(|| {
        SchemaFile::parse_schema(include_str!("../../testdata/schemas/retail.toml")).ok()
    });
    let Some(schema) = schema else { return };
    if let Err(e) = compile(text, schema) {
        let _ = e.render(text);
    }
});
