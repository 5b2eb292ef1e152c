//! A small database shared by the worker's integration tests: 300 customers with every
//! kind of column (numerical, timestamp, categorical, multicategorical, text) and their
//! orders over 2024.

use std::fmt::Write;

use relgraph_common::Database;
use relgraph_common::pql::{self, PlanOptions, TaskPlan};
use relgraph_worker::label::{Labels, LocalFacts, build};

/// The plan of `query` over [`database`] and the labels of all its 300 customers.
pub fn labelled(db: &Database, query: &str) -> (TaskPlan, Labels) {
    let task = pql::compile(query, &db.schema()).unwrap_or_else(|e| panic!("{}", e.render(query)));
    let plan = pql::plan(task, db, &PlanOptions::default()).expect("plan");
    let everyone: Vec<usize> = (0..300).collect();
    let labels = build(&plan, db, &everyone, &LocalFacts { db }).expect("labels");
    (plan, labels)
}

pub fn database() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut customers = String::from("customer_id,score,joined,tier,tags,note\n");
    let mut orders = String::from("order_id,customer_id,amount,timestamp\n");
    let mut order = 0;
    for c in 0..300u32 {
        let tier = ["gold", "silver", "bronze"][c as usize % 3];
        let tags = ["a|b", "b", "c|a|d", ""][c as usize % 4];
        let note = ["likes fast delivery", "returns often", "quiet buyer"][c as usize % 3];
        let _ = writeln!(
            customers,
            "C{c},{},2024-0{}-15,{tier},{tags},{note}",
            (c * 37 % 101) as f64 / 10.0,
            1 + c % 9
        );
        for k in 0..(c % 5) {
            order += 1;
            let day = 1 + (c * 7 + k * 11) % 27;
            let month = 1 + (c + k) % 11;
            let _ = writeln!(
                orders,
                "O{order},C{c},{},2024-{month:02}-{day:02} 12:00:00",
                10 + (c * k) % 90
            );
        }
    }
    std::fs::write(dir.path().join("customers.csv"), customers).expect("write");
    std::fs::write(dir.path().join("orders.csv"), orders).expect("write");
    std::fs::write(
        dir.path().join("schema.toml"),
        "[tables.customers.columns]\n\
         tags = { dtype = \"string\", stype = \"multicategorical\" }\n\
         note = { dtype = \"string\", stype = \"text\" }\n\
         [tables.orders]\nforeign_keys = { customer_id = \"customers\" }\n",
    )
    .expect("write");
    let db = Database::load(dir.path(), None).expect("load");
    (dir, db)
}
