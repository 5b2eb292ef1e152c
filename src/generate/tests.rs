//! Generators: formatting, determinism, exact inference, and the planted signal.
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
    let planted = Planted {
        customers: 300,
        permuted: false,
    };
    let worlds: [(&str, &dyn World); 3] = [
        ("retail", &retail),
        ("promotions", &promotions),
        ("planted", &planted),
    ];
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
                let next = orders
                    .iter()
                    .any(|&(u, d)| u > t && u <= t + 21 * DAY && (d == "lens" || d == "tripod"));
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
    for (u, t) in
        strings(&db, "purchases", "user_id")
            .into_iter()
            .zip(times(&db, "purchases", "timestamp"))
    {
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
