//! The `retail` world: an electronics shop's customers, catalog, orders and behaviour.
//!
//! Planted structure, each crossing tables: customers prefer their favourite brands and
//! the categories of their interests; buying a camera / laptop / phone / smartwatch makes
//! its accessories likely within weeks (co-purchase pairs); an add-to-cart in
//! `browsing_sessions` usually precedes an order; visits follow the season (summer bump,
//! a large holiday peak, weekends); churn hazard grows with time since the last order and
//! with recent returns, and falls with campaign engagement; low-quality products come back
//! as `returns` with the reason `defective`.

use rand_pcg::Pcg64Mcg;
use relgraph_common::schema::{DType, DatabaseSchema, SType};
use relgraph_common::time::{DAY, civil_from_days, days_from_civil};

mod customer;

use customer::Customer;

use super::{CHUNK, Draw, Rows, World, stream_rng, table};

const START: i64 = days_from_civil(2024, 1, 1) * DAY;

/// (name, base price, interest)
const CATEGORIES: [(&str, f64, usize); 12] = [
    ("camera", 800.0, 0),
    ("lens", 450.0, 0),
    ("tripod", 90.0, 0),
    ("laptop", 1200.0, 1),
    ("laptop_bag", 60.0, 1),
    ("mouse", 40.0, 1),
    ("phone", 700.0, 2),
    ("phone_case", 25.0, 2),
    ("charger", 30.0, 2),
    ("headphones", 180.0, 3),
    ("smartwatch", 300.0, 4),
    ("watch_band", 35.0, 4),
];
/// Accessories a purchase of the category makes likely: (category, accessories).
const COMPLEMENTS: [(usize, &[usize]); 4] = [(0, &[1, 2]), (3, &[4, 5]), (6, &[7, 8]), (10, &[11])];
const INTERESTS: [&str; 5] = ["photo", "computing", "mobile", "audio", "fitness"];
const BRANDS: [&str; 12] = [
    "Lumen", "Aperture", "Nordic", "Vertex", "Kestrel", "Orbit", "Solace", "Tandem", "Quartz",
    "Helio", "Marlow", "Zenith",
];
const LINES: [&str; 6] = ["Pro", "Air", "Max", "Lite", "Ultra", "One"];
const SEGMENTS: [&str; 3] = ["budget", "regular", "premium"];
const COUNTRIES: [&str; 8] = ["US", "UK", "DE", "FR", "ES", "IT", "NL", "PL"];
const REASONS: [&str; 5] = [
    "defective",
    "not as described",
    "changed mind",
    "too expensive",
    "arrived late",
];
const CHANNELS: [&str; 3] = ["email", "push", "sms"];
const THEMES: [&str; 5] = [
    "Photo Week",
    "Work Smarter",
    "Mobile Days",
    "Sound Fest",
    "Move More",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Sizes of the retail world.
#[derive(Clone, Copy, Debug)]
pub struct RetailSize {
    pub customers: usize,
    pub products: usize,
    pub days: i64,
}

struct Product {
    name: String,
    category: usize,
    brand: usize,
    price: f64,
    cost: f64,
    quality: f64,
}

struct Campaign {
    name: String,
    channel: &'static str,
    start: i64,
    interest: usize,
    discount: i64,
}

/// The world, with its catalog and campaigns drawn once from the seed.
pub struct Retail {
    size: RetailSize,
    end: i64,
    products: Vec<Product>,
    /// Per category: product indices and cumulative popularity.
    by_category: Vec<(Vec<usize>, Vec<f64>)>,
    campaigns: Vec<Campaign>,
}

impl Retail {
    pub fn new(size: RetailSize, seed: u64) -> Self {
        let mut rng = stream_rng(seed, 0);
        let products: Vec<Product> = (0..size.products.max(CATEGORIES.len()))
            .map(|i| {
                let category = if i < CATEGORIES.len() {
                    i
                } else {
                    rng.below(CATEGORIES.len())
                };
                let brand = rng.below(BRANDS.len());
                let price = CATEGORIES[category].1 * (0.35 * rng.normal()).exp();
                let name = format!(
                    "{} {} {} {}{}",
                    BRANDS[brand],
                    LINES[rng.below(LINES.len())],
                    CATEGORIES[category].0.replace('_', " "),
                    (b'A' + rng.below(26) as u8) as char,
                    10 + i
                );
                let cost = price * rng.between(0.45, 0.8);
                Product {
                    name,
                    category,
                    brand,
                    price,
                    cost,
                    quality: rng.unit(),
                }
            })
            .collect();
        let mut by_category = vec![(Vec::new(), Vec::new()); CATEGORIES.len()];
        for (i, p) in products.iter().enumerate() {
            let (items, cumulative): &mut (Vec<usize>, Vec<f64>) = &mut by_category[p.category];
            let popularity = rng.normal().exp();
            cumulative.push(cumulative.last().copied().unwrap_or(0.0) + popularity);
            items.push(i);
        }
        let end = START + size.days * DAY;
        let campaigns = (0..)
            .map(|i| START + 3 * DAY + i * 14 * DAY)
            .take_while(|&t| t < end)
            .map(|start| {
                let interest = rng.below(INTERESTS.len());
                let (year, month, day) = civil_from_days(start / DAY);
                let month = MONTHS[month as usize - 1];
                Campaign {
                    name: format!("{} {month} {day} {year}", THEMES[interest]),
                    channel: CHANNELS[rng.below(CHANNELS.len())],
                    start,
                    interest,
                    discount: 5 * (1 + rng.below(6) as i64),
                }
            })
            .collect();
        Retail {
            size,
            end,
            products,
            by_category,
            campaigns,
        }
    }
}

/// Table order of the world (indices into the chunk buffers).
const CUSTOMERS: usize = 0;
const PRODUCTS: usize = 1;
const ORDERS: usize = 2;
const ORDER_EVENTS: usize = 3;
const BROWSING: usize = 4;
const RETURNS: usize = 5;
const LOYALTY: usize = 6;
const CAMPAIGNS: usize = 7;
const INTERACTIONS: usize = 8;

impl World for Retail {
    fn schema(&self) -> DatabaseSchema {
        use DType::{Float64 as F, Int64 as I, String as S, Timestamp as T};
        use SType::{Categorical as Cat, Id, Multicategorical as Multi, Numerical as Num, Text};
        let ts = ("timestamp", T, SType::Timestamp);
        DatabaseSchema {
            tables: vec![
                table(
                    "customers",
                    &[
                        ("customer_id", S, Id),
                        ("segment", S, Cat),
                        ("country", S, Cat),
                        ("age", I, Num),
                        ("interests", S, Multi),
                        ("joined_date", T, SType::Timestamp),
                    ],
                    Some("customer_id"),
                    Some("joined_date"),
                    &[],
                ),
                table(
                    "products",
                    &[
                        ("product_id", S, Id),
                        ("name", S, Text),
                        ("category", S, Cat),
                        ("brand", S, Cat),
                        ("price", F, Num),
                        ("cost", F, Num),
                    ],
                    Some("product_id"),
                    None,
                    &[],
                ),
                table(
                    "orders",
                    &[
                        ("order_id", S, Id),
                        ("customer_id", S, Id),
                        ("product_id", S, Id),
                        ("quantity", I, Num),
                        ("price", F, Num),
                        ts,
                    ],
                    Some("order_id"),
                    Some("timestamp"),
                    &[("customer_id", "customers"), ("product_id", "products")],
                ),
                table(
                    "order_events",
                    &[
                        ("event_id", S, Id),
                        ("order_id", S, Id),
                        ("status", S, Cat),
                        ts,
                    ],
                    Some("event_id"),
                    Some("timestamp"),
                    &[("order_id", "orders")],
                ),
                table(
                    "browsing_sessions",
                    &[
                        ("session_id", S, Id),
                        ("customer_id", S, Id),
                        ("product_id", S, Id),
                        ("action", S, Cat),
                        ("duration_sec", I, Num),
                        ts,
                    ],
                    Some("session_id"),
                    Some("timestamp"),
                    &[("customer_id", "customers"), ("product_id", "products")],
                ),
                table(
                    "returns",
                    &[
                        ("return_id", S, Id),
                        ("customer_id", S, Id),
                        ("order_id", S, Id),
                        ("return_reason", S, Cat),
                        ts,
                    ],
                    Some("return_id"),
                    Some("timestamp"),
                    &[("customer_id", "customers"), ("order_id", "orders")],
                ),
                table(
                    "loyalty",
                    &[
                        ("loyalty_id", S, Id),
                        ("customer_id", S, Id),
                        ("points", I, Num),
                        ("tier", S, Cat),
                        ts,
                    ],
                    Some("loyalty_id"),
                    Some("timestamp"),
                    &[("customer_id", "customers")],
                ),
                table(
                    "campaigns",
                    &[
                        ("campaign_id", S, Id),
                        ("name", S, Text),
                        ("channel", S, Cat),
                        ("discount_pct", I, Num),
                        ("start_date", T, SType::Timestamp),
                    ],
                    Some("campaign_id"),
                    Some("start_date"),
                    &[],
                ),
                table(
                    "interactions",
                    &[
                        ("interaction_id", S, Id),
                        ("customer_id", S, Id),
                        ("campaign_id", S, Id),
                        ("type", S, Cat),
                        ts,
                    ],
                    Some("interaction_id"),
                    Some("timestamp"),
                    &[("customer_id", "customers"), ("campaign_id", "campaigns")],
                ),
            ],
        }
    }

    fn prelude(&self, out: &mut [Rows]) {
        for (i, p) in self.products.iter().enumerate() {
            let row = &mut out[PRODUCTS];
            row.id("P", 5000 + i as u64)
                .text(&p.name)
                .text(CATEGORIES[p.category].0);
            row.text(BRANDS[p.brand]).money(p.price).money(p.cost).end();
        }
        for (i, c) in self.campaigns.iter().enumerate() {
            let row = &mut out[CAMPAIGNS];
            row.id("CP", 100 + i as u64)
                .text(&c.name)
                .text(c.channel)
                .int(c.discount)
                .date(c.start);
            row.end();
        }
    }

    fn chunks(&self) -> usize {
        self.size.customers.div_ceil(CHUNK)
    }

    fn chunk(&self, index: usize, rng: &mut Pcg64Mcg, out: &mut [Rows]) {
        let first = index * CHUNK;
        for c in first..(first + CHUNK).min(self.size.customers) {
            Customer::new(self, c as u64, rng).live(self, rng, out);
        }
    }
}
