//! `relgraph generate`: synthetic databases with planted, learnable structure.
//!
//! Each world simulates its entities independently in chunks, in parallel; a chunk's RNG
//! is seeded from (seed, chunk), so the output is the same for a seed whatever the thread
//! count. Rows are formatted straight into per-table byte buffers and written in chunk
//! order, one CSV file per table.

mod planted;
mod promotions;
mod retail;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use rayon::prelude::*;
use relgraph_common::schema::{
    ColumnSchema, DType, DatabaseSchema, ForeignKey, SType, TableSchema,
};
use relgraph_common::time::{write_date, write_timestamp};
use serde::Serialize;

pub use planted::Planted;
pub use promotions::{Promotions, PromotionsSize};
pub use retail::{Retail, RetailSize};

/// Where to write and with which seed (every world takes these).
#[derive(Debug, clap::Args)]
pub struct Output {
    /// Directory to write the tables into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed: the same seed and sizes give the same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write only these tables (comma-separated); the whole world is still simulated.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Kind {
    /// An electronics shop: customers, products, orders, order_events, browsing_sessions,
    /// returns, loyalty, campaigns, interactions.
    Retail {
        #[command(flatten)]
        output: Output,
        #[arg(long, default_value_t = 5_000)]
        customers: usize,
        #[arg(long, default_value_t = 500)]
        products: usize,
        /// Days of history, from 2024-01-01.
        #[arg(long, default_value_t = 730)]
        days: i64,
    },
    /// Users, purchases and notifications, with a known per-user causal effect of a push
    /// (written to _truth/uplift.csv).
    Promotions {
        #[command(flatten)]
        output: Output,
        #[arg(long, default_value_t = 5_000)]
        users: usize,
        /// Days of history, from 2025-01-01.
        #[arg(long, default_value_t = 180)]
        days: i64,
    },
    /// Customers whose segment one column decides (`planted`), beside noise columns and
    /// orders: a world for checking explanations.
    Planted {
        #[command(flatten)]
        output: Output,
        #[arg(long, default_value_t = 1_500)]
        customers: usize,
        /// Move each `planted` value to another customer after the segments are drawn.
        #[arg(long)]
        permuted: bool,
    },
}

/// Writes a small retail world to `out` for a test (quietly): `customers`, `products`
/// and `days` of history, from `seed`.
#[cfg(test)]
pub fn retail_for_test(out: &Path, seed: u64, [customers, products, days]: [usize; 3]) {
    run(&Kind::Retail {
        output: Output {
            out: out.to_path_buf(),
            seed,
            json: true,
            only: Vec::new(),
        },
        customers,
        products,
        days: days as i64,
    })
    .expect("generate");
}

pub fn run(kind: &Kind) -> Result<()> {
    let (summary, json) = match *kind {
        Kind::Retail {
            ref output,
            customers,
            products,
            days,
        } => {
            let world = Retail::new(
                RetailSize {
                    customers,
                    products,
                    days,
                },
                output.seed,
            );
            (
                write(&world, &output.out, output.seed, &output.only)?,
                output.json,
            )
        }
        Kind::Promotions {
            ref output,
            users,
            days,
        } => {
            let world = Promotions::new(PromotionsSize { users, days });
            (
                write(&world, &output.out, output.seed, &output.only)?,
                output.json,
            )
        }
        Kind::Planted {
            ref output,
            customers,
            permuted,
        } => {
            let world = Planted {
                customers,
                permuted,
            };
            (
                write(&world, &output.out, output.seed, &output.only)?,
                output.json,
            )
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.to_text());
    }
    Ok(())
}

impl Summary {
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!("wrote {}\n", self.dir.display());
        for (name, rows) in &self.tables {
            let _ = writeln!(
                out,
                "  {name:18} {:>12} rows",
                crate::inspect::thousands(*rows)
            );
        }
        let _ = writeln!(
            out,
            "  {} rows in {:.2} s: {} rows/s",
            crate::inspect::thousands(self.rows),
            self.seconds,
            crate::inspect::thousands(self.rows_per_second as u64)
        );
        out
    }
}

/// Entities simulated per chunk (the unit of parallel work and of RNG streams).
const CHUNK: usize = 256;

/// A generated world: its tables and how to simulate one chunk of its entities.
pub trait World: Sync {
    /// The schema the world writes, which inference must recover exactly.
    fn schema(&self) -> DatabaseSchema;
    /// Rows written once, before the chunks (catalogs, campaigns), one buffer per table.
    fn prelude(&self, out: &mut [Rows]);
    /// Number of chunks of entities.
    fn chunks(&self) -> usize;
    /// Simulates chunk `index` with its own `rng`: one buffer per table, then one per
    /// ground-truth file.
    fn chunk(&self, index: usize, rng: &mut Pcg64Mcg, out: &mut [Rows]);
    /// Ground-truth files (name, header) written under `_truth/`, never loaded as tables.
    fn truth_files(&self) -> Vec<(&'static str, &'static [&'static str])> {
        Vec::new()
    }
}

/// Rows of one table being formatted as CSV.
#[derive(Debug, Default)]
pub struct Rows {
    pub buf: Vec<u8>,
    pub rows: u64,
}

impl Rows {
    fn sep(&mut self) -> &mut Self {
        self.buf.push(b',');
        self
    }

    /// A text field; quoted if it holds a comma, quote or newline.
    pub fn text(&mut self, s: &str) -> &mut Self {
        if s.contains([',', '"', '\n', '\r']) {
            self.buf.push(b'"');
            self.buf
                .extend_from_slice(s.replace('"', "\"\"").as_bytes());
            self.buf.push(b'"');
        } else {
            self.buf.extend_from_slice(s.as_bytes());
        }
        self.sep()
    }

    /// An identifier `PREFIX-n`.
    pub fn id(&mut self, prefix: &str, n: u64) -> &mut Self {
        self.buf.extend_from_slice(prefix.as_bytes());
        self.buf.push(b'-');
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.sep()
    }

    /// An identifier `PREFIX-owner-n` for rows owned by an entity.
    pub fn sub_id(&mut self, prefix: &str, owner: u64, n: u64) -> &mut Self {
        let mut b = itoa::Buffer::new();
        self.buf.extend_from_slice(prefix.as_bytes());
        self.buf.push(b'-');
        self.buf.extend_from_slice(b.format(owner).as_bytes());
        self.buf.push(b'-');
        self.buf.extend_from_slice(b.format(n).as_bytes());
        self.sep()
    }

    pub fn int(&mut self, v: i64) -> &mut Self {
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self.sep()
    }

    /// A number with exactly two decimals (always written as a decimal).
    pub fn money(&mut self, v: f64) -> &mut Self {
        let cents = (v * 100.0).round() as i64;
        let mut b = itoa::Buffer::new();
        if cents < 0 {
            self.buf.push(b'-');
        }
        self.buf
            .extend_from_slice(b.format(cents.abs() / 100).as_bytes());
        self.buf.push(b'.');
        let c = (cents.abs() % 100) as u8;
        self.buf.extend_from_slice(&[b'0' + c / 10, b'0' + c % 10]);
        self.sep()
    }

    /// A floating-point number in its shortest exact form.
    pub fn float(&mut self, v: f64) -> &mut Self {
        self.buf
            .extend_from_slice(ryu::Buffer::new().format(v).as_bytes());
        self.sep()
    }

    pub fn timestamp(&mut self, t: i64) -> &mut Self {
        write_timestamp(t, &mut self.buf);
        self.sep()
    }

    pub fn date(&mut self, t: i64) -> &mut Self {
        write_date(t, &mut self.buf);
        self.sep()
    }

    /// Ends the row (the last field's separator becomes the newline).
    pub fn end(&mut self) {
        if let Some(last) = self.buf.last_mut() {
            *last = b'\n';
        }
        self.rows += 1;
    }
}

/// Shorthand to declare a world's table schemas.
pub fn table(
    name: &str,
    columns: &[(&str, DType, SType)],
    primary_key: Option<&str>,
    time_column: Option<&str>,
    foreign_keys: &[(&str, &str)],
) -> TableSchema {
    TableSchema {
        name: name.to_string(),
        columns: columns
            .iter()
            .map(|&(n, dtype, stype)| ColumnSchema {
                name: n.to_string(),
                dtype,
                stype,
            })
            .collect(),
        primary_key: primary_key.map(str::to_string),
        time_column: time_column.map(str::to_string),
        foreign_keys: foreign_keys
            .iter()
            .map(|&(c, t)| ForeignKey {
                column: c.to_string(),
                references: t.to_string(),
            })
            .collect(),
    }
}

/// Sampling helpers over the generators' RNG.
pub trait Draw {
    fn unit(&mut self) -> f64;
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Exponential waiting time with the given rate.
    fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// An index drawn with probability proportional to `weights`.
    fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

impl Draw for Pcg64Mcg {
    fn unit(&mut self) -> f64 {
        self.random::<f64>()
    }
}

/// An index drawn from cumulative weights (`cumulative` ends with the total).
pub fn pick_cumulative(rng: &mut Pcg64Mcg, cumulative: &[f64]) -> usize {
    let total = cumulative.last().copied().unwrap_or(0.0);
    let x = rng.unit() * total;
    cumulative
        .partition_point(|&c| c <= x)
        .min(cumulative.len().saturating_sub(1))
}

/// The RNG of stream `stream` for a seed: independent streams, stable across versions.
pub fn stream_rng(seed: u64, stream: u64) -> Pcg64Mcg {
    Pcg64Mcg::seed_from_u64(relgraph_common::hash::combine(seed, stream))
}

/// What a generation run wrote.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub dir: PathBuf,
    pub tables: Vec<(String, u64)>,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

/// Writes the world into `dir`: one `TABLE.csv` per table (only the tables in `only`,
/// if it names any), ground truth under `_truth/`. The whole world is simulated either
/// way, so a table is the same whichever others are written.
pub fn write(world: &dyn World, dir: &Path, seed: u64, only: &[String]) -> Result<Summary> {
    let started = Instant::now();
    let schema = world.schema();
    for name in only {
        if schema.table(name).is_none() {
            let names: Vec<&str> = schema.tables.iter().map(|t| t.name.as_str()).collect();
            anyhow::bail!(
                "--only: no table `{name}` in this world (tables: {})",
                names.join(", ")
            );
        }
    }
    let wanted: Vec<bool> = schema
        .tables
        .iter()
        .map(|t| only.is_empty() || only.contains(&t.name))
        .chain(world.truth_files().iter().map(|_| only.is_empty()))
        .collect();
    let mut outputs: Vec<(PathBuf, Vec<&str>)> = schema
        .tables
        .iter()
        .map(|t| {
            (
                dir.join(format!("{}.csv", t.name)),
                t.columns.iter().map(|c| c.name.as_str()).collect(),
            )
        })
        .collect();
    for (name, header) in world.truth_files() {
        outputs.push((dir.join("_truth").join(name), header.to_vec()));
    }
    let mut files = Vec::with_capacity(outputs.len());
    for ((path, header), &wanted) in outputs.iter().zip(&wanted) {
        if !wanted {
            files.push(None);
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut f = create(path)?;
        writeln!(f, "{}", header.join(","))
            .with_context(|| format!("cannot write {}", path.display()))?;
        files.push(Some(f));
    }
    let mut counts = vec![0u64; files.len()];
    let mut emit = |bufs: Vec<Rows>| -> Result<()> {
        for (((rows, f), count), (path, _)) in bufs
            .into_iter()
            .zip(&mut files)
            .zip(&mut counts)
            .zip(&outputs)
        {
            if let Some(f) = f {
                f.write_all(&rows.buf)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                *count += rows.rows;
            }
        }
        Ok(())
    };
    let buffers = || -> Vec<Rows> { outputs.iter().map(|_| Rows::default()).collect() };
    let mut prelude = buffers();
    world.prelude(&mut prelude);
    emit(prelude)?;
    let batch = rayon::current_num_threads() * 8;
    for first in (0..world.chunks()).step_by(batch) {
        let last = (first + batch).min(world.chunks());
        let outs: Vec<Vec<Rows>> = (first..last)
            .into_par_iter()
            .map(|index| {
                let mut out = buffers();
                world.chunk(index, &mut stream_rng(seed, 1 + index as u64), &mut out);
                out
            })
            .collect();
        for out in outs {
            emit(out)?;
        }
    }
    for (f, (path, _)) in files.iter_mut().zip(&outputs) {
        if let Some(f) = f {
            f.flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    let tables: Vec<(String, u64)> = schema
        .tables
        .iter()
        .zip(counts.iter().copied())
        .zip(&wanted)
        .filter(|(_, wanted)| **wanted)
        .map(|((t, n), _)| (t.name.clone(), n))
        .collect();
    let rows = tables.iter().map(|(_, n)| n).sum();
    let seconds = started.elapsed().as_secs_f64();
    Ok(Summary {
        dir: dir.to_path_buf(),
        tables,
        rows,
        seconds,
        rows_per_second: rows as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests;
