//! The PQL front end never panics, whatever its input: random text, random bytes, and
//! soups of real tokens (which reach deep into the parser and validator).

use proptest::prelude::*;
use relgraph_common::pql::compile;
use relgraph_common::schema_file::SchemaFile;

const TOKENS: [&str; 58] = [
    "PREDICT",
    "EVALUATE",
    "EXPLAIN",
    "FOR",
    "EACH",
    "WHERE",
    "ASSUMING",
    "RANK",
    "TOP",
    "CLASSIFY",
    "FORECAST",
    "TIMEFRAMES",
    "AND",
    "OR",
    "NOT",
    "IS",
    "NULL",
    "IN",
    "LIKE",
    "CONTAINS",
    "STARTS",
    "ENDS",
    "WITH",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "FIRST",
    "LAST",
    "LIST_DISTINCT",
    "BOOL",
    "orders",
    "customers",
    "products",
    "price",
    "customer_id",
    "product_id",
    "*",
    ".",
    ",",
    "(",
    ")",
    "->",
    "=",
    "!=",
    "<",
    ">=",
    "-",
    "+",
    "/",
    "0",
    "30",
    "-INF",
    "days",
    "'x'",
    "2024-01-01",
    "1.5e3",
];

fn schema() -> relgraph_common::DatabaseSchema {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/schemas/retail.toml");
    SchemaFile::parse_schema(&std::fs::read_to_string(path).expect("schema")).expect("parse schema")
}

fn check(text: &str, schema: &relgraph_common::DatabaseSchema) {
    if let Err(e) = compile(text, schema) {
        let _ = e.render(text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_text(text in "\\PC{0,80}") {
        check(&text, &schema());
    }

    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        check(&String::from_utf8_lossy(&bytes), &schema());
    }

    #[test]
    fn token_soup(picks in prop::collection::vec(0..TOKENS.len(), 0..40)) {
        let text: Vec<&str> = picks.iter().map(|&i| TOKENS[i]).collect();
        check(&text.join(" "), &schema());
    }

    #[test]
    fn mutated_valid_queries(cut in 0usize..140, insert in 0..TOKENS.len()) {
        let base = "PREDICT COUNT(orders.* WHERE orders.price > 1.5, 0, 30, days) > 0 FOR EACH customers.customer_id WHERE COUNT(orders.*, -30, 0, days) > 0";
        let at = base.char_indices().map(|(i, _)| i).nth(cut % base.len()).unwrap_or(0);
        let text = format!("{} {} {}", &base[..at], TOKENS[insert], &base[at..]);
        check(&text, &schema());
    }
}
