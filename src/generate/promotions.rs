//! The `promotions` world: users, their purchases, and the notifications sent to them.
//!
//! Push notifications are sent at random (12% of eligible user-days), so their effect is
//! identifiable. A push raises the user's daily purchase probability by `effect` on the
//! three days after the push's day. The effect varies with what the history shows: it is
//! large for users who open notifications, buy rarely, and use a mobile app, and near zero
//! for frequent buyers and web users. Emails and SMS have no effect.
//!
//! `_truth/uplift.csv` holds, per user, the base daily purchase probability, the push
//! effect, and the true uplift of the PQL question
//! `COUNT(PURCHASES.*, 1, 4, days) > 0 ... ASSUMING COUNT(NOTIFICATIONS.* WHERE TYPE =
//! 'PUSH', 0, 1, days) > 0` for a user not pushed in the days before:
//! `(1 - (1 - p - effect)^3) - (1 - (1 - p)^3)`.

use rand_pcg::Pcg64Mcg;
use relgraph_common::schema::{DType, DatabaseSchema, SType};
use relgraph_common::time::{DAY, days_from_civil};

use super::{CHUNK, Draw, Rows, World, table};

const START: i64 = days_from_civil(2025, 1, 1) * DAY;
const PLATFORMS: [&str; 3] = ["ios", "android", "web"];
const PLATFORM_EFFECT: [f64; 3] = [1.0, 0.8, 0.3];
const PUSH_RATE: f64 = 0.12;
const EMAIL_RATE: f64 = 0.15;
const SMS_RATE: f64 = 0.02;
/// Days after a push's day on which it raises the purchase probability.
const BOOSTED_DAYS: i64 = 3;

const USERS: usize = 0;
const PURCHASES: usize = 1;
const NOTIFICATIONS: usize = 2;
const TRUTH: usize = 3;

#[derive(Clone, Copy, Debug)]
pub struct PromotionsSize {
    pub users: usize,
    pub days: i64,
}

#[derive(Debug)]
pub struct Promotions {
    size: PromotionsSize,
}

impl Promotions {
    pub fn new(size: PromotionsSize) -> Self {
        Promotions { size }
    }
}

/// The true uplift of one push on buying within the three following days.
pub fn true_uplift(p: f64, effect: f64) -> f64 {
    (1.0 - p).powi(3) - (1.0 - p - effect).powi(3)
}

impl World for Promotions {
    fn schema(&self) -> DatabaseSchema {
        use DType::{Float64 as F, Int64 as I, String as S, Timestamp as T};
        use SType::{Categorical as Cat, Id, Numerical as Num};
        let ts = ("timestamp", T, SType::Timestamp);
        DatabaseSchema {
            tables: vec![
                table(
                    "users",
                    &[
                        ("user_id", S, Id),
                        ("notif_eligible", I, Cat),
                        ("platform", S, Cat),
                        ("age", I, Num),
                        ("signup_date", T, SType::Timestamp),
                    ],
                    Some("user_id"),
                    Some("signup_date"),
                    &[],
                ),
                table(
                    "purchases",
                    &[
                        ("purchase_id", S, Id),
                        ("user_id", S, Id),
                        ("amount", F, Num),
                        ts,
                    ],
                    Some("purchase_id"),
                    Some("timestamp"),
                    &[("user_id", "users")],
                ),
                table(
                    "notifications",
                    &[
                        ("notification_id", S, Id),
                        ("user_id", S, Id),
                        ("type", S, Cat),
                        ("opened", I, Cat),
                        ts,
                    ],
                    Some("notification_id"),
                    Some("timestamp"),
                    &[("user_id", "users")],
                ),
            ],
        }
    }

    fn prelude(&self, _out: &mut [Rows]) {}

    fn chunks(&self) -> usize {
        self.size.users.div_ceil(CHUNK)
    }

    fn chunk(&self, index: usize, rng: &mut Pcg64Mcg, out: &mut [Rows]) {
        let first = index * CHUNK;
        for u in first..(first + CHUNK).min(self.size.users) {
            self.user(10_000 + u as u64, rng, out);
        }
    }

    fn truth_files(&self) -> Vec<(&'static str, &'static [&'static str])> {
        vec![(
            "uplift.csv",
            &[
                "user_id",
                "base_daily_prob",
                "push_daily_effect",
                "true_uplift",
            ],
        )]
    }
}

impl Promotions {
    fn user(&self, id: u64, rng: &mut Pcg64Mcg, out: &mut [Rows]) {
        let end = START + self.size.days * DAY;
        let eligible = rng.chance(0.8);
        let platform = rng.weighted(&[0.45, 0.4, 0.15]);
        let signup = if rng.chance(0.6) {
            START - (rng.unit() * 365.0 * DAY as f64) as i64
        } else {
            START + (rng.unit() * 0.66 * (end - START) as f64) as i64
        };
        let p = (0.03f64.ln() + 0.8 * rng.normal()).exp().clamp(0.001, 0.25);
        let responsive = rng.unit();
        let effect =
            0.3 * responsive * responsive * (1.0 - p / 0.25).powi(2) * PLATFORM_EFFECT[platform];
        let spend = (3.5 + 0.5 * rng.normal()).exp();
        let row = &mut out[USERS];
        row.id("U", id)
            .int(i64::from(eligible))
            .text(PLATFORMS[platform]);
        row.int(18 + rng.below(60) as i64).date(signup).end();
        let truth = &mut out[TRUTH];
        truth
            .id("U", id)
            .float(p)
            .float(effect)
            .float(true_uplift(p, effect))
            .end();

        let (mut purchases, mut notes) = (0u64, 0u64);
        let mut boosted_until = i64::MIN;
        let first_day = signup.max(START).div_euclid(DAY) * DAY;
        for day in (first_day..end).step_by(DAY as usize) {
            let in_day = |rng: &mut Pcg64Mcg| day + (rng.unit() * (DAY - 1) as f64) as i64;
            let boosted = day <= boosted_until;
            if rng.chance(p + if boosted { effect } else { 0.0 }) {
                let t = in_day(rng).max(signup);
                purchases += 1;
                let row = &mut out[PURCHASES];
                row.sub_id("PU", id, purchases)
                    .id("U", id)
                    .money(spend * (0.4 * rng.normal()).exp());
                row.timestamp(t).end();
            }
            let sends = [
                (
                    "PUSH",
                    eligible && rng.chance(PUSH_RATE),
                    0.1 + 0.6 * responsive,
                ),
                ("EMAIL", rng.chance(EMAIL_RATE), 0.05 + 0.3 * responsive),
                ("SMS", eligible && rng.chance(SMS_RATE), 0.3),
            ];
            for (kind, sent, open_rate) in sends {
                if !sent {
                    continue;
                }
                let t = in_day(rng).max(signup);
                if kind == "PUSH" {
                    boosted_until = day + BOOSTED_DAYS * DAY;
                }
                notes += 1;
                let row = &mut out[NOTIFICATIONS];
                row.sub_id("N", id, notes).id("U", id).text(kind);
                row.int(i64::from(rng.chance(open_rate))).timestamp(t).end();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplift_is_the_difference_of_buying_probabilities() {
        assert_eq!(true_uplift(0.1, 0.0), 0.0);
        let p: f64 = 0.05;
        let with = 1.0 - (1.0 - p - 0.1f64).powi(3);
        let without = 1.0 - (1.0 - p).powi(3);
        assert!((true_uplift(p, 0.1) - (with - without)).abs() < 1e-12);
    }
}
