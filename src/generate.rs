//! `relgraph generate`: synthetic databases with planted, learnable structure.
//!
//! Each world simulates its entities independently in chunks, in parallel; a chunk's RNG
//! is seeded from (seed, chunk), so the output is the same for a seed whatever the thread
//! count. Rows are formatted straight into per-table byte buffers and written in chunk
//! order, one CSV file per table.

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
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    Pcg64Mcg::seed_from_u64(z ^ (z >> 31))
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
mod tests {
    use relgraph_common::Database;

    use super::*;

    fn small_retail(seed: u64) -> Retail {
        Retail::new(
            RetailSize {
                customers: 600,
                products: 80,
                days: 400,
            },
            seed,
        )
    }

    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in [dir.to_path_buf(), dir.join("_truth")] {
            let Ok(entries) = std::fs::read_dir(&sub) else {
                continue;
            };
            for e in entries.flatten().filter(|e| e.path().is_file()) {
                out.push((e.path(), std::fs::read(e.path()).expect("read")));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn same_seed_same_bytes_whatever_the_thread_count() {
        let root = tempfile::tempdir().expect("tempdir");
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        let (a, b, c) = (
            root.path().join("a"),
            root.path().join("b"),
            root.path().join("c"),
        );
        one.install(|| write(&small_retail(5), &a, 5, &[]))
            .expect("write a");
        write(&small_retail(5), &b, 5, &[]).expect("write b");
        write(&small_retail(6), &c, 6, &[]).expect("write c");
        let strip =
            |v: Vec<(PathBuf, Vec<u8>)>| v.into_iter().map(|(_, bytes)| bytes).collect::<Vec<_>>();
        assert_eq!(strip(files(&a)), strip(files(&b)));
        assert_ne!(strip(files(&a)), strip(files(&c)));
        let world = Promotions::new(PromotionsSize {
            users: 300,
            days: 30,
        });
        let (p, q) = (root.path().join("p"), root.path().join("q"));
        one.install(|| write(&world, &p, 9, &[])).expect("write p");
        write(&world, &q, 9, &[]).expect("write q");
        assert_eq!(strip(files(&p)), strip(files(&q)));
    }

    #[test]
    fn generated_worlds_are_inferred_exactly_as_generated() {
        let root = tempfile::tempdir().expect("tempdir");
        let retail = small_retail(1);
        let promotions = Promotions::new(PromotionsSize {
            users: 400,
            days: 60,
        });
        let worlds: [(&str, &dyn World); 2] = [("retail", &retail), ("promotions", &promotions)];
        for (name, world) in worlds {
            let dir = root.path().join(name);
            let summary = write(world, &dir, 1, &[]).expect("write");
            let db = Database::load(&dir, None).expect("load");
            assert_eq!(
                world.schema().diff(&db.schema()),
                Vec::<String>::new(),
                "{name}"
            );
            for (table, rows) in &summary.tables {
                assert_eq!(
                    db.table(table).map(|t| t.num_rows() as u64),
                    Some(*rows),
                    "{table}"
                );
                assert!(*rows > 0, "{name}.{table} is empty");
            }
            for t in &db.tables {
                assert!(
                    t.dangling.iter().all(|&d| d == 0),
                    "{}: generated keys never dangle",
                    t.name()
                );
            }
        }
    }

    fn strings(db: &Database, table: &str, column: &str) -> Vec<String> {
        let array = db
            .table(table)
            .and_then(|t| t.column(column))
            .expect("column");
        let text = array
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("strings");
        text.iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect()
    }

    fn times(db: &Database, table: &str, column: &str) -> Vec<i64> {
        let array = db
            .table(table)
            .and_then(|t| t.column(column))
            .expect("column");
        let ts = array
            .as_any()
            .downcast_ref::<arrow::array::TimestampSecondArray>()
            .expect("times");
        ts.values().to_vec()
    }

    const DAY: i64 = relgraph_common::time::DAY;

    /// The planted structure shows in the tables: accessories follow main purchases,
    /// carts precede orders, and the holiday season is busy.
    #[test]
    fn retail_signal_is_in_the_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let world = Retail::new(
            RetailSize {
                customers: 3000,
                products: 200,
                days: 730,
            },
            3,
        );
        write(&world, dir.path(), 3, &[]).expect("write");
        let db = Database::load(dir.path(), None).expect("load");
        let categories: std::collections::HashMap<String, String> =
            strings(&db, "products", "product_id")
                .into_iter()
                .zip(strings(&db, "products", "category"))
                .collect();
        let customers = strings(&db, "orders", "customer_id");
        let products = strings(&db, "orders", "product_id");
        let at = times(&db, "orders", "timestamp");
        let mut by_customer: std::collections::HashMap<&str, Vec<(i64, &str)>> = Default::default();
        for i in 0..at.len() {
            by_customer
                .entry(&customers[i])
                .or_default()
                .push((at[i], &categories[&products[i]]));
        }
        let followed_by_photo_gear = |trigger: &str| {
            let (mut hits, mut all) = (0.0, 0.0);
            for orders in by_customer.values() {
                for &(t, _) in orders.iter().filter(|(_, c)| *c == trigger) {
                    all += 1.0;
                    let next = orders.iter().any(|&(u, d)| {
                        u > t && u <= t + 21 * DAY && (d == "lens" || d == "tripod")
                    });
                    hits += f64::from(u8::from(next));
                }
            }
            hits / all
        };
        let (after_camera, after_headphones) = (
            followed_by_photo_gear("camera"),
            followed_by_photo_gear("headphones"),
        );
        assert!(
            after_camera > 3.0 * after_headphones,
            "co-purchase: {after_camera} vs {after_headphones}"
        );

        let carts: std::collections::HashSet<(String, String, i64)> = {
            let (c, p, a, t) = (
                strings(&db, "browsing_sessions", "customer_id"),
                strings(&db, "browsing_sessions", "product_id"),
                strings(&db, "browsing_sessions", "action"),
                times(&db, "browsing_sessions", "timestamp"),
            );
            (0..t.len())
                .filter(|&i| a[i] == "add_to_cart")
                .map(|i| (c[i].clone(), p[i].clone(), t[i] / 3600))
                .collect()
        };
        let carted = (0..at.len())
            .filter(|&i| {
                (0..=1).any(|h| {
                    carts.contains(&(customers[i].clone(), products[i].clone(), at[i] / 3600 - h))
                })
            })
            .count();
        assert!(
            carted as f64 > 0.6 * at.len() as f64,
            "{carted} of {} orders follow a cart",
            at.len()
        );

        let in_window = |from: (u32, u32), to: (u32, u32)| {
            at.iter()
                .filter(|&&t| {
                    let (_, m, d) = relgraph_common::time::civil_from_days(t / DAY);
                    (m, d) >= from && (m, d) <= to
                })
                .count() as f64
        };
        let holiday = in_window((11, 20), (12, 24)) / 35.0;
        let before = in_window((10, 16), (11, 19)) / 35.0;
        assert!(
            holiday > 1.4 * before,
            "holiday {holiday}/day vs {before}/day before"
        );
    }

    /// A push raises purchases in the following three days by about the planted effect:
    /// much more for users whose true uplift is high than for those whose uplift is low.
    #[test]
    fn promotions_uplift_is_in_the_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let world = Promotions::new(PromotionsSize {
            users: 4000,
            days: 150,
        });
        write(&world, dir.path(), 4, &[]).expect("write");
        let db = Database::load(dir.path(), None).expect("load");
        let truth = std::fs::read_to_string(dir.path().join("_truth/uplift.csv")).expect("truth");
        let mut uplift: Vec<(String, f64)> = truth
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_string(), f[3].parse().expect("uplift"))
            })
            .collect();
        assert_eq!(uplift.len(), 4000);
        uplift.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut pushes: std::collections::HashMap<String, Vec<i64>> = Default::default();
        let (users, kinds, sent) = (
            strings(&db, "notifications", "user_id"),
            strings(&db, "notifications", "type"),
            times(&db, "notifications", "timestamp"),
        );
        for i in 0..sent.len() {
            if kinds[i] == "PUSH" {
                pushes
                    .entry(users[i].clone())
                    .or_default()
                    .push(sent[i] / DAY);
            }
        }
        let mut bought: std::collections::HashMap<String, std::collections::HashSet<i64>> =
            Default::default();
        for (u, t) in strings(&db, "purchases", "user_id").into_iter().zip(times(
            &db,
            "purchases",
            "timestamp",
        )) {
            bought.entry(u).or_default().insert(t / DAY);
        }
        let lift = |group: &[(String, f64)]| {
            let (mut boosted, mut boosted_buys, mut plain, mut plain_buys) = (0.0, 0.0, 0.0, 0.0);
            for (user, _) in group {
                let days = pushes.get(user).cloned().unwrap_or_default();
                let buys = bought.get(user).cloned().unwrap_or_default();
                let start = relgraph_common::time::days_from_civil(2025, 1, 1);
                for day in start + 10..start + 150 {
                    let is_boosted = days.iter().any(|&d| day > d && day <= d + 3);
                    let buy = f64::from(u8::from(buys.contains(&day)));
                    if is_boosted {
                        boosted += 1.0;
                        boosted_buys += buy
                    } else {
                        plain += 1.0;
                        plain_buys += buy
                    }
                }
            }
            boosted_buys / boosted - plain_buys / plain
        };
        let (low, high) = (lift(&uplift[..1000]), lift(&uplift[3000..]));
        assert!(
            high > 0.04 && high > 4.0 * low,
            "lift high {high}, low {low}"
        );
    }

    #[test]
    fn rows_format_fields() {
        let mut r = Rows::default();
        r.text("a,b")
            .id("CU", 12)
            .sub_id("O", 3, 4)
            .int(-5)
            .money(12.345)
            .money(-0.5);
        r.float(0.25)
            .timestamp(86_400 + 3_661)
            .date(0)
            .text("say \"hi\"");
        r.end();
        assert_eq!(
            String::from_utf8(r.buf).expect("utf8"),
            "\"a,b\",CU-12,O-3-4,-5,12.35,-0.50,0.25,1970-01-02 01:01:01,1970-01-01,\"say \"\"hi\"\"\"\n"
        );
        assert_eq!(r.rows, 1);
    }

    #[test]
    fn weighted_draws_follow_their_weights() {
        let mut rng = stream_rng(7, 0);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[rng.weighted(&[1.0, 2.0, 7.0])] += 1;
        }
        let share = |i: usize| counts[i] as f64 / 30_000.0;
        assert!(
            (share(0) - 0.1).abs() < 0.01 && (share(2) - 0.7).abs() < 0.015,
            "{counts:?}"
        );
        let cumulative = [1.0, 3.0, 10.0];
        let mut hits = [0usize; 3];
        for _ in 0..30_000 {
            hits[pick_cumulative(&mut rng, &cumulative)] += 1;
        }
        assert!((hits[1] as f64 / 30_000.0 - 0.2).abs() < 0.012, "{hits:?}");
    }
}
