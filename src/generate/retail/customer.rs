//! One customer's life in the retail world: visits, orders, returns, loyalty, campaigns.

use rand_pcg::Pcg64Mcg;
use relgraph_common::time::{DAY, civil_from_days};

use super::super::{Draw, Rows, pick_cumulative};
use super::*;

/// Seasonal multiplier of visit rates at time `t`, and its maximum.
fn season(t: i64) -> f64 {
    let days = t.div_euclid(DAY);
    let (_, month, day) = civil_from_days(days);
    let day_of_year = f64::from((month - 1) * 30 + day);
    let summer = 1.0 + 0.25 * (std::f64::consts::TAU * (day_of_year - 80.0) / 365.0).sin();
    let holiday = if (month == 11 && day >= 20) || (month == 12 && day <= 24) {
        1.8
    } else {
        1.0
    };
    let weekend = if (days + 3).rem_euclid(7) >= 5 {
        1.3
    } else {
        1.0
    };
    summer * holiday * weekend
}
const SEASON_MAX: f64 = 1.25 * 1.8 * 1.3;

/// One customer's hidden traits and running state.
pub(super) struct Customer {
    id: u64,
    segment: usize,
    interests: Vec<usize>,
    brands: [usize; 2],
    rate: f64,
    enrolled: bool,
    joined: i64,
    last_order: i64,
    returns: Vec<i64>,
    engagement: f64,
    /// (accessory category, brand, until)
    pending: Option<(usize, usize, i64)>,
    discount: Option<(f64, i64)>,
    points: i64,
    churned: bool,
    counters: [u64; 9],
}

impl Customer {
    pub(super) fn new(world: &Retail, index: u64, rng: &mut Pcg64Mcg) -> Self {
        let segment = rng.weighted(&[0.5, 0.35, 0.15]);
        let mut interests = vec![rng.below(INTERESTS.len())];
        while interests.len() < 3 && rng.chance(0.45) {
            let i = rng.below(INTERESTS.len());
            if !interests.contains(&i) {
                interests.push(i);
            }
        }
        let joined = START + (rng.unit() * 0.8 * (world.end - START) as f64) as i64;
        Customer {
            id: 1000 + index,
            segment,
            interests,
            brands: [rng.below(BRANDS.len()), rng.below(BRANDS.len())],
            rate: [0.04, 0.08, 0.15][segment] * (0.5 * rng.normal()).exp(),
            enrolled: rng.chance([0.2, 0.4, 0.7][segment]),
            joined,
            last_order: joined,
            returns: Vec::new(),
            engagement: 0.0,
            pending: None,
            discount: None,
            points: 0,
            churned: false,
            counters: [0; 9],
        }
    }

    fn next(&mut self, table: usize) -> u64 {
        self.counters[table] += 1;
        self.counters[table]
    }

    /// Writes the customer row, then simulates visits and campaigns until churn or the end.
    pub(super) fn live(mut self, world: &Retail, rng: &mut Pcg64Mcg, out: &mut [Rows]) {
        let interests: Vec<&str> = self.interests.iter().map(|&i| INTERESTS[i]).collect();
        let row = &mut out[CUSTOMERS];
        row.id("CU", self.id)
            .text(SEGMENTS[self.segment])
            .text(COUNTRIES[rng.below(COUNTRIES.len())]);
        row.int(18 + rng.below(58) as i64)
            .text(&interests.join("|"))
            .date(self.joined)
            .end();
        let joined = self.joined;
        let mut campaigns = world
            .campaigns
            .iter()
            .enumerate()
            .skip_while(|(_, c)| c.start < joined)
            .peekable();
        let mut t = self.joined;
        let mut forced: Option<i64> = None;
        loop {
            let candidate = t + (rng.exponential(self.rate * SEASON_MAX) * DAY as f64) as i64 + 1;
            let (next, visit) = match forced.take() {
                Some(f) if f <= candidate => (f.max(t + 1), true),
                kept => {
                    forced = kept;
                    (candidate, rng.chance(season(candidate) / SEASON_MAX))
                }
            };
            while let Some((i, c)) = campaigns.next_if(|(_, c)| c.start <= next) {
                if let Some(click) = self.campaign(world.end, i, c, rng, out) {
                    forced = Some(forced.map_or(click, |f| f.min(click)));
                }
            }
            t = next;
            if t > world.end {
                return;
            }
            if visit && !self.visit(world, t, rng, out) {
                self.churned = true;
                for (i, c) in campaigns {
                    self.campaign(world.end, i, c, rng, out);
                }
                return;
            }
        }
    }

    /// A campaign reaching the customer; returns when a click brings them to the shop.
    fn campaign(
        &mut self,
        end: i64,
        i: usize,
        c: &Campaign,
        rng: &mut Pcg64Mcg,
        out: &mut [Rows],
    ) -> Option<i64> {
        let t = c.start + (rng.unit() * 2.0 * DAY as f64) as i64;
        if !rng.chance(0.5) || t > end {
            return None;
        }
        let fit = match (self.churned, self.interests.contains(&c.interest)) {
            (true, _) => 0.03,
            (false, true) => 0.5,
            (false, false) => 0.15,
        };
        let opened = rng.chance(fit);
        let clicked = opened && rng.chance(0.4);
        let kind = if clicked {
            "clicked"
        } else if opened {
            "opened"
        } else {
            "delivered"
        };
        let n = self.next(INTERACTIONS);
        let row = &mut out[INTERACTIONS];
        row.sub_id("I", self.id, n)
            .id("CU", self.id)
            .id("CP", 100 + i as u64)
            .text(kind)
            .timestamp(t)
            .end();
        self.engagement = self.engagement * 0.7 + f64::from(u8::from(clicked));
        clicked.then(|| {
            self.discount = Some((c.discount as f64 / 100.0, t + 7 * DAY));
            if rng.chance(0.6) {
                let category = *[0, 3, 6, 9, 10].get(c.interest).unwrap_or(&0);
                self.pending = Some((category, self.brands[0], t + 7 * DAY));
            }
            t + (rng.unit() * DAY as f64) as i64
        })
    }

    /// The product a visit is about: accessories first after a main purchase, then
    /// favourite brands within the customer's interests, then what is popular.
    fn focus(&self, world: &Retail, t: i64, rng: &mut Pcg64Mcg) -> usize {
        let category = match self.pending {
            Some((category, _, until)) if t <= until && rng.chance(0.6) => category,
            _ if rng.chance(0.75) => {
                let interest = self.interests[rng.below(self.interests.len())];
                let options: Vec<usize> = (0..CATEGORIES.len())
                    .filter(|&c| CATEGORIES[c].2 == interest)
                    .collect();
                options[rng.below(options.len())]
            }
            _ => rng.below(CATEGORIES.len()),
        };
        let (items, cumulative) = &world.by_category[category];
        let brand = match self.pending {
            Some((c, b, _)) if c == category => Some(b),
            _ if rng.chance(0.7) => Some(self.brands[rng.below(2)]),
            _ => None,
        };
        if let Some(b) = brand {
            let branded: Vec<usize> = items
                .iter()
                .copied()
                .filter(|&p| world.products[p].brand == b)
                .collect();
            if !branded.is_empty() {
                return branded[rng.below(branded.len())];
            }
        }
        items[pick_cumulative(rng, cumulative)]
    }

    /// One visit: product-page sessions and maybe an order. Returns false if they churned.
    fn visit(&mut self, world: &Retail, t: i64, rng: &mut Pcg64Mcg, out: &mut [Rows]) -> bool {
        let idle_days = (t - self.last_order) as f64 / DAY as f64;
        let recent_returns = self.returns.iter().filter(|&&r| t - r < 90 * DAY).count() as f64;
        let hazard = 0.01 + 0.0012 * idle_days + 0.05 * recent_returns - 0.015 * self.engagement;
        if rng.chance(hazard.clamp(0.003, 0.4)) {
            return false;
        }
        let product = self.focus(world, t, rng);
        let wishlist = rng.chance(0.15);
        let cart = rng.chance(if self.brands.contains(&world.products[product].brand) {
            0.45
        } else {
            0.25
        });
        let action = if cart {
            "add_to_cart"
        } else if wishlist {
            "add_to_wishlist"
        } else {
            "view"
        };
        self.session(product, action, t, rng, out);
        let related = &world.by_category[world.products[product].category].0;
        for k in 0..rng.below(4) {
            let other = related[rng.below(related.len())];
            self.session(other, "view", t + 60 * (k as i64 + 1) * 4, rng, out);
        }
        let price = world.products[product].price;
        let afford = [
            1.0 - (price / 2500.0).min(0.6),
            1.0 - (price / 5000.0).min(0.4),
            1.0,
        ][self.segment];
        let buy =
            (0.04 + 0.5 * f64::from(u8::from(cart)) + 0.1 * f64::from(u8::from(wishlist))) * afford;
        if rng.chance(buy) {
            self.order(
                world,
                product,
                t + 60 + (rng.unit() * 1800.0) as i64,
                rng,
                out,
            );
        }
        true
    }

    fn session(
        &mut self,
        product: usize,
        action: &str,
        t: i64,
        rng: &mut Pcg64Mcg,
        out: &mut [Rows],
    ) {
        let n = self.next(BROWSING);
        let duration =
            (rng.exponential(1.0 / 60.0) + if action == "view" { 10.0 } else { 90.0 }) as i64;
        let row = &mut out[BROWSING];
        row.sub_id("S", self.id, n)
            .id("CU", self.id)
            .id("P", 5000 + product as u64)
            .text(action);
        row.int(duration).timestamp(t).end();
    }

    fn order(
        &mut self,
        world: &Retail,
        product: usize,
        t: i64,
        rng: &mut Pcg64Mcg,
        out: &mut [Rows],
    ) {
        let p = &world.products[product];
        let discount = match self.discount {
            Some((d, until)) if t <= until => d,
            _ => 0.0,
        };
        let unit = p.price * (1.0 - discount);
        let quantity = 1 + rng.weighted(&[0.7, 0.2, 0.07, 0.03]) as i64;
        let n = self.next(ORDERS);
        let row = &mut out[ORDERS];
        row.sub_id("O", self.id, n)
            .id("CU", self.id)
            .id("P", 5000 + product as u64);
        row.int(quantity).money(unit).timestamp(t).end();
        self.last_order = t;
        if let Some((_, accessories)) = COMPLEMENTS.iter().find(|(c, _)| *c == p.category)
            && rng.chance(0.6)
        {
            let accessory = accessories[rng.below(accessories.len())];
            self.pending = Some((accessory, p.brand, t + 21 * DAY));
        }
        let delivered = self.fulfil(world.end, n, t, rng, out);
        if self.enrolled {
            self.points += (unit * quantity as f64).round() as i64;
            let tier = match self.points {
                ..1000 => "bronze",
                1000..5000 => "silver",
                _ => "gold",
            };
            let k = self.next(LOYALTY);
            let row = &mut out[LOYALTY];
            row.sub_id("L", self.id, k)
                .id("CU", self.id)
                .int((unit * quantity as f64).round() as i64);
            row.text(tier).timestamp(t).end();
        }
        let Some(delivered) = delivered else { return };
        let risk = (0.02 + 0.2 * (1.0 - p.quality).powi(2)) * [1.3, 1.0, 0.7][self.segment];
        let returned = delivered + (rng.between(1.0, 14.0) * DAY as f64) as i64;
        if rng.chance(risk) && returned <= world.end {
            let reason = rng.weighted(&[
                2.0 * (1.0 - p.quality),
                0.5,
                0.6,
                [0.8, 0.3, 0.1][self.segment],
                0.2,
            ]);
            let k = self.next(RETURNS);
            let row = &mut out[RETURNS];
            row.sub_id("R", self.id, k)
                .id("CU", self.id)
                .sub_id("O", self.id, n);
            row.text(REASONS[reason]).timestamp(returned).end();
            self.returns.push(returned);
        }
    }

    /// Placed → shipped → delivered (or cancelled); events after the end are not yet known.
    fn fulfil(
        &mut self,
        end: i64,
        order: u64,
        t: i64,
        rng: &mut Pcg64Mcg,
        out: &mut [Rows],
    ) -> Option<i64> {
        let cancelled = rng.chance(0.03);
        let shipped = t + (rng.between(0.5, 3.0) * DAY as f64) as i64;
        let delivered = shipped + (rng.between(1.0, 5.0) * DAY as f64) as i64;
        let steps: &[(&str, i64)] = if cancelled {
            &[
                ("placed", t),
                (
                    "cancelled",
                    t + (rng.between(0.05, 1.0) * DAY as f64) as i64,
                ),
            ]
        } else {
            &[
                ("placed", t),
                ("shipped", shipped),
                ("delivered", delivered),
            ]
        };
        for &(status, at) in steps.iter().filter(|(_, at)| *at <= end) {
            let k = self.next(ORDER_EVENTS);
            let row = &mut out[ORDER_EVENTS];
            row.sub_id("E", self.id, k)
                .sub_id("O", self.id, order)
                .text(status)
                .timestamp(at)
                .end();
        }
        (!cancelled && delivered <= end).then_some(delivered)
    }
}
