//! A validated query in words: what `relgraph pql check` prints and the golden files hold.

use std::fmt::Write as _;

use super::bound::{AggSpec, BoundExpr, Target, Task, Window};
use crate::schema::DatabaseSchema;

fn window(w: &Window) -> String {
    let unit = |s: i64| {
        if s % 86_400 == 0 {
            format!("{}d", s / 86_400)
        } else {
            format!("{s}s")
        }
    };
    let start = w.start.map_or("-INF".to_string(), unit);
    format!(
        "(t{}{start}, t{}{}]",
        if start.starts_with('-') { "" } else { "+" },
        if w.end < 0 { "" } else { "+" },
        unit(w.end)
    )
}

/// An expression with names from the schema; aggregates as `a0`, `a1`, ...
pub fn show(e: &BoundExpr, schema: &DatabaseSchema) -> String {
    let s = |x: &BoundExpr| show(x, schema);
    match e {
        BoundExpr::Const(v) => v.to_string(),
        BoundExpr::Column(c, _) => {
            let t = &schema.tables[c.table];
            format!("{}.{}", t.name, t.columns[c.column].name)
        }
        BoundExpr::Agg(i) => format!("a{i}"),
        BoundExpr::Neg(x) => format!("(-{})", s(x)),
        BoundExpr::Not(x) => format!("(NOT {})", s(x)),
        BoundExpr::And(a, b) => format!("({} AND {})", s(a), s(b)),
        BoundExpr::Or(a, b) => format!("({} OR {})", s(a), s(b)),
        BoundExpr::Cmp(op, a, b) => {
            let o = op.symbol();
            format!("({} {o} {})", s(a), s(b))
        }
        BoundExpr::Arith(op, a, b) => {
            let o = op.symbol();
            format!("({} {o} {})", s(a), s(b))
        }
        BoundExpr::IsNull(x, neg) => {
            format!("({} IS {}NULL)", s(x), if *neg { "NOT " } else { "" })
        }
        BoundExpr::InList(x, list, neg) => {
            let items: Vec<String> = list.iter().map(ToString::to_string).collect();
            format!(
                "({} {}IN ({}))",
                s(x),
                if *neg { "NOT " } else { "" },
                items.join(", ")
            )
        }
        BoundExpr::Str(op, x, pattern, neg) => {
            let o = op.keyword();
            format!(
                "({} {}{o} '{pattern}')",
                s(x),
                if *neg { "NOT " } else { "" }
            )
        }
    }
}

fn aggregate(i: usize, a: &AggSpec, schema: &DatabaseSchema) -> String {
    let path: Vec<String> = a
        .path
        .iter()
        .map(|l| {
            format!(
                "{}.{}",
                schema.tables[l.child].name, schema.tables[l.child].columns[l.column].name
            )
        })
        .collect();
    let arg = a.arg.as_ref().map_or("*".to_string(), |e| show(e, schema));
    let mut out = format!("a{i} = {}({arg}", a.func.name());
    if let Some(f) = &a.filter {
        let _ = write!(out, " WHERE {}", show(f, schema));
    }
    let _ = write!(
        out,
        ") over {} {} via {}",
        schema.tables[a.table].name,
        window(&a.window),
        path.join(" -> ")
    );
    out
}

impl Task {
    /// The task in words, one fact per line.
    pub fn describe(&self, schema: &DatabaseSchema) -> String {
        let entity = &schema.tables[self.entity_table];
        let mut out = String::new();
        let _ = writeln!(out, "mode: {:?}", self.mode);
        let _ = writeln!(
            out,
            "task: {} (loss {})",
            self.task.name(),
            self.task.loss()
        );
        let _ = writeln!(
            out,
            "entity: {}.{}",
            entity.name, entity.columns[self.entity_key].name
        );
        if let Some(ids) = &self.ids {
            let shown: Vec<String> = ids.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "ids: {}", shown.join(", "));
        }
        let target = match &self.target {
            Target::Expr(e) => show(e, schema),
            Target::Column(c, dtype) => format!(
                "{} ({dtype}, static)",
                show(&BoundExpr::Column(*c, *dtype), schema)
            ),
            Target::Items(i) => format!(
                "items of a{i} -> {}",
                match self.task {
                    super::bound::TaskType::Ranking { items, k } =>
                        format!("top {k} of {}", schema.tables[items].name),
                    _ => String::new(),
                }
            ),
            Target::Forecast(i) => match self.task {
                super::bound::TaskType::Forecast { steps } => {
                    format!("a{i} over {steps} consecutive windows")
                }
                _ => format!("a{i}"),
            },
        };
        let _ = writeln!(out, "target: {target}");
        for (i, a) in self.aggregates.iter().enumerate() {
            let _ = writeln!(out, "  {}", aggregate(i, a, schema));
        }
        if let Some(f) = &self.filter {
            let _ = writeln!(out, "where: {}", show(f, schema));
        }
        if let Some(a) = &self.assuming {
            let _ = writeln!(out, "assuming: {}", show(a, schema));
        }
        let _ = writeln!(out, "metrics: {}", self.task.metrics().join(", "));
        let baseline = match (&self.target, &self.task) {
            (Target::Column(..), super::bound::TaskType::Regression) => "global mean",
            _ => self.task.baseline(),
        };
        let _ = writeln!(out, "baseline: {baseline}");
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}
