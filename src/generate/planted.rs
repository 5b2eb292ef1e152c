//! The `planted` world: customers whose `segment` is decided by one column, for testing
//! explanations. `segment` is `high` when `planted + 0.3 N(0, 1) > 0`, else `low`;
//! `noise_a` (numeric) and `noise_b` (five categories) and each customer's 1-4 orders
//! (random amounts and days) carry nothing about it. With `permuted`, the `planted`
//! values are moved to other customers after the segments are drawn, which is what the
//! explanation test's permutation check scores a trained model on.

use rand_pcg::Pcg64Mcg;
use relgraph_common::schema::{DType, DatabaseSchema, SType};
use relgraph_common::time::{DAY, days_from_civil};

use super::{CHUNK, Draw, Rows, World, table};

const START: i64 = days_from_civil(2025, 1, 1) * DAY;
const NOISE: [&str; 5] = ["a", "b", "c", "d", "e"];

#[derive(Clone, Copy, Debug)]
pub struct Planted {
    pub customers: usize,
    pub permuted: bool,
}

impl World for Planted {
    fn schema(&self) -> DatabaseSchema {
        use DType::{Float64 as F, String as S, Timestamp as T};
        use SType::{Categorical as Cat, Id, Numerical as Num};
        DatabaseSchema {
            tables: vec![
                table(
                    "customers",
                    &[
                        ("customer_id", S, Id),
                        ("planted", F, Num),
                        ("noise_a", F, Num),
                        ("noise_b", S, Cat),
                        ("segment", S, Cat),
                    ],
                    Some("customer_id"),
                    None,
                    &[],
                ),
                table(
                    "orders",
                    &[
                        ("order_id", S, Id),
                        ("customer_id", S, Id),
                        ("amount", F, Num),
                        ("timestamp", T, SType::Timestamp),
                    ],
                    Some("order_id"),
                    Some("timestamp"),
                    &[("customer_id", "customers")],
                ),
            ],
        }
    }

    fn prelude(&self, _out: &mut [Rows]) {}

    fn chunks(&self) -> usize {
        self.customers.div_ceil(CHUNK)
    }

    fn chunk(&self, index: usize, rng: &mut Pcg64Mcg, out: &mut [Rows]) {
        let first = index * CHUNK;
        let last = (first + CHUNK).min(self.customers);
        let drawn: Vec<(f64, f64, usize, bool)> = (first..last)
            .map(|_| {
                let planted = rng.normal();
                let noise_a = rng.normal();
                let noise_b = rng.below(NOISE.len());
                (
                    planted,
                    noise_a,
                    noise_b,
                    planted + 0.3 * rng.normal() > 0.0,
                )
            })
            .collect();
        for (i, &(_, noise_a, noise_b, high)) in drawn.iter().enumerate() {
            let id = (first + i) as u64;
            // Permuted: the planted value of another customer of the chunk.
            let planted = drawn[if self.permuted {
                (i * 7 + 3) % drawn.len()
            } else {
                i
            }]
            .0;
            let row = &mut out[0];
            row.id("C", id)
                .float(planted)
                .float(noise_a)
                .text(NOISE[noise_b]);
            row.text(if high { "high" } else { "low" }).end();
            for n in 0..1 + rng.below(4) as u64 {
                let t = START + (rng.unit() * 240.0 * DAY as f64) as i64;
                let row = &mut out[1];
                row.sub_id("O", id, n + 1)
                    .id("C", id)
                    .money(5.0 + 95.0 * rng.unit());
                row.timestamp(t).end();
            }
        }
    }
}
