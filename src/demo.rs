//! `relgraph demo`: the tour of what works. At this stage: generate both worlds, load
//! them back, show the inferred schemas and check that inference recovered what was
//! generated, then plan PQL questions of PQL.md §10 and show their training tables.

use std::path::PathBuf;

use anyhow::{Result, bail};
use relgraph_common::Database;

use relgraph_common::pql::PlanOptions;

use crate::generate::{self, Promotions, PromotionsSize, Retail, RetailSize, World};
use crate::{inspect, pql};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where to write the demo data.
    #[arg(long, default_value = "relgraph-demo")]
    dir: PathBuf,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let retail = Retail::new(
        RetailSize {
            customers: 5_000,
            products: 500,
            days: 730,
        },
        args.seed,
    );
    let promotions = Promotions::new(PromotionsSize {
        users: 5_000,
        days: 180,
    });
    let worlds: [(&str, &dyn World, &str); 2] = [
        (
            "retail",
            &retail,
            "PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID WHERE COUNT(ORDERS.*, -90, 0, days) > 0",
        ),
        (
            "promotions",
            &promotions,
            "PREDICT COUNT(PURCHASES.*, 1, 4, days) > 0 FOR EACH USERS.USER_ID WHERE USERS.NOTIF_ELIGIBLE = 1 ASSUMING COUNT(NOTIFICATIONS.* WHERE NOTIFICATIONS.TYPE = 'PUSH', 0, 1, days) > 0",
        ),
    ];
    for (name, world, question) in worlds {
        let dir = args.dir.join(name);
        let summary = generate::write(world, &dir, args.seed, &[])?;
        println!("== {name}\n{}", summary.to_text());
        let db = Database::load(&dir, None)?;
        println!("{}", inspect::to_text(&db));
        let diff = world.schema().diff(&db.schema());
        if !diff.is_empty() {
            bail!(
                "inference disagrees with the generated {name} schema:\n  {}",
                diff.join("\n  ")
            );
        }
        println!("inference recovered the generated {name} schema exactly.\n");
        println!(
            "$ relgraph pql check \"{question}\" --data {}",
            dir.display()
        );
        let plan = pql::plan_query(&db, question, &PlanOptions::default())?;
        let labels = pql::label_all(&db, &plan)?;
        println!("{}", pql::check_text(&db, &plan, &labels));
    }
    println!(
        "next: relgraph inspect {} --emit-schema",
        args.dir.join("retail").display()
    );
    Ok(())
}
