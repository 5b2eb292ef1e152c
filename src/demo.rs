//! `relgraph demo`: the embedded tour. At this stage: generate both worlds, load them
//! back, show the inferred schemas and check that inference recovered what was generated.

use std::path::PathBuf;

use anyhow::{Result, bail};
use relgraph_common::Database;

use crate::generate::{self, Promotions, PromotionsSize, Retail, RetailSize, World};
use crate::inspect;

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
    let worlds: [(&str, &dyn World); 2] = [("retail", &retail), ("promotions", &promotions)];
    for (name, world) in worlds {
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
    }
    println!(
        "next: relgraph inspect {} --emit-schema",
        args.dir.join("retail").display()
    );
    Ok(())
}
