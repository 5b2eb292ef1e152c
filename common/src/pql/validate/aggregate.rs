//! Aggregations: their table, argument, WHERE, window direction and type rules.

use super::{Binder, Scope};
use crate::pql::ast::*;
use crate::pql::bound::*;
use crate::pql::error::{PqlError, Span};

impl Binder<'_> {
    pub(super) fn aggregate(
        &mut self,
        a: &Aggregate,
        span: Span,
        scope: Scope,
    ) -> Result<(BoundExpr, Ty), PqlError> {
        if let ExprKind::Aggregate(inner) = &a.arg.kind {
            return Err(PqlError::new(
                inner.func_span,
                "aggregations cannot be nested",
            ));
        }
        let first = first_column(&a.arg).ok_or_else(|| {
            PqlError::new(
                a.arg.span,
                format!("{} needs a column of a linked table", a.func.name()),
            )
            .with_hint(format!(
                "write {}(orders.amount, 0, 30, days)",
                a.func.name()
            ))
        })?;
        let fact = self.resolve_table(first.path.last().unwrap_or(&first.path[0]))?;
        let path = self.path(fact, &first.path, a.arg.span)?;
        let fact_schema = self.table(fact);
        if fact_schema.time_column.is_none() {
            return Err(PqlError::new(
                a.arg.span,
                format!(
                    "`{}` has no time column, so it cannot be aggregated over a time window",
                    fact_schema.name
                ),
            )
            .with_hint("set time_column in schema.toml if it has one"));
        }
        let window = self.window(a, scope)?;
        let (arg, arg_ty, arg_dtype) = match &a.arg.kind {
            ExprKind::Column(ColumnRef { column: None, .. }) => {
                if a.func != AggFunc::Count {
                    return Err(PqlError::new(
                        a.arg.span,
                        format!(
                            "`{first}` can only be counted; {} needs a column",
                            a.func.name()
                        ),
                    )
                    .with_hint(format!(
                        "write COUNT({first}, ...) or {}({}.<column>, ...)",
                        a.func.name(),
                        fact_schema.name
                    )));
                }
                (None, Ty::Num, None)
            }
            _ => {
                let rows = Scope::Rows(fact);
                let stripped = strip_paths(&a.arg);
                let (b, ty) = self.bind(&stripped, rows)?;
                let dtype = match &b {
                    BoundExpr::Column(_, d) => Some(*d),
                    _ => None,
                };
                (Some(b), ty, dtype)
            }
        };
        self.check_function(a, arg_ty)?;
        let filter = match &a.filter {
            Some(f) => Some(self.condition(
                &strip_paths(f),
                Scope::Rows(fact),
                "the aggregation's WHERE",
            )?),
            None => None,
        };
        let spec = AggSpec {
            func: a.func,
            table: fact,
            path,
            arg,
            arg_ty,
            arg_dtype,
            filter,
            window,
            text: Expr {
                kind: ExprKind::Aggregate(a.clone()),
                span,
            }
            .to_string(),
        };
        let ty = spec.ty();
        let index = match self.aggregates.iter().position(|s| *s == spec) {
            Some(i) => i,
            None => {
                self.aggregates.push(spec);
                self.aggregates.len() - 1
            }
        };
        Ok((BoundExpr::Agg(index), ty))
    }

    pub(super) fn check_function(&self, a: &Aggregate, ty: Ty) -> Result<(), PqlError> {
        let ok = match a.func {
            AggFunc::Sum | AggFunc::Avg => ty == Ty::Num,
            AggFunc::Min | AggFunc::Max => matches!(ty, Ty::Num | Ty::Time),
            _ => true,
        };
        if ok {
            return Ok(());
        }
        let needs = if matches!(a.func, AggFunc::Min | AggFunc::Max) {
            "a number or a timestamp"
        } else {
            "a number"
        };
        Err(PqlError::new(
            a.arg.span,
            format!(
                "{} needs {needs}, but `{}` is {}",
                a.func.name(),
                a.arg,
                ty.name()
            ),
        )
        .with_hint("COUNT, COUNT_DISTINCT, FIRST and LAST take any column"))
    }

    /// The window in seconds, checked against the direction of its clause.
    pub(super) fn window(&mut self, a: &Aggregate, scope: Scope) -> Result<Window, PqlError> {
        let unit = a.unit.seconds() as f64;
        let secs = |v: f64| (v * unit).round() as i64;
        let start = a.start.value.map(secs);
        let end = a.end.value.map(secs).unwrap_or(i64::MIN);
        let span = a.start.span.to(a.end.span);
        let shown = |v: f64| format!("{}", v.abs());
        if start.is_some_and(|s| s >= end) {
            return Err(PqlError::new(
                span,
                "the window is empty: its start must be before its end",
            ));
        }
        let crosses = start.is_none_or(|s| s < 0) && end > 0;
        match scope {
            Scope::Forward | Scope::Backward if crosses => {
                let e = a.end.value.map_or(String::new(), shown);
                Err(PqlError::new(span, "this window crosses the anchor time; a window looks either forward or backward")
                    .with_hint(format!("split it, e.g. `0, {e}` for the future")))
            }
            Scope::Forward if end <= 0 => {
                let hint = match a.start.value {
                    Some(s) => format!(
                        "did you mean `{}, {}`?",
                        a.end.value.map_or(String::new(), shown),
                        shown(s)
                    ),
                    None => "start at 0 or later".to_string(),
                };
                self.backward.push(
                    PqlError::new(
                        span,
                        "this window looks backward; targets and ASSUMING must look forward",
                    )
                    .with_hint(hint),
                );
                Ok(Window { start, end })
            }
            Scope::Backward if end > 0 => {
                let e = a.end.value.map_or(String::new(), shown);
                let hint = match a.start.value {
                    Some(s) if s > 0.0 => format!("did you mean `-{e}, -{}`?", shown(s)),
                    _ => format!("did you mean `-{e}, 0`?"),
                };
                Err(PqlError::new(
                    span,
                    "WHERE looks at the past; this window reaches into the future",
                )
                .with_hint(hint))
            }
            _ => Ok(Window { start, end }),
        }
    }
}

/// The first column reference of an expression, in reading order.
fn first_column(e: &Expr) -> Option<&ColumnRef> {
    match &e.kind {
        ExprKind::Column(c) => Some(c),
        ExprKind::Neg(x) | ExprKind::Not(x) => first_column(x),
        ExprKind::IsNull { expr, .. }
        | ExprKind::InList { expr, .. }
        | ExprKind::Str { expr, .. } => first_column(expr),
        ExprKind::And(a, b)
        | ExprKind::Or(a, b)
        | ExprKind::Cmp(_, a, b)
        | ExprKind::Arith(_, a, b) => first_column(a).or_else(|| first_column(b)),
        ExprKind::Literal(_) | ExprKind::Aggregate(_) => None,
    }
}

/// The expression with every `a->b.c` shortened to `b.c` (the path is resolved once).
fn strip_paths(e: &Expr) -> Expr {
    let kind = match &e.kind {
        ExprKind::Column(c) => ExprKind::Column(ColumnRef {
            path: c.path.last().cloned().into_iter().collect(),
            column: c.column.clone(),
        }),
        ExprKind::Neg(x) => ExprKind::Neg(Box::new(strip_paths(x))),
        ExprKind::Not(x) => ExprKind::Not(Box::new(strip_paths(x))),
        ExprKind::And(a, b) => ExprKind::And(Box::new(strip_paths(a)), Box::new(strip_paths(b))),
        ExprKind::Or(a, b) => ExprKind::Or(Box::new(strip_paths(a)), Box::new(strip_paths(b))),
        ExprKind::Cmp(op, a, b) => {
            ExprKind::Cmp(*op, Box::new(strip_paths(a)), Box::new(strip_paths(b)))
        }
        ExprKind::Arith(op, a, b) => {
            ExprKind::Arith(*op, Box::new(strip_paths(a)), Box::new(strip_paths(b)))
        }
        ExprKind::IsNull { expr, negated } => ExprKind::IsNull {
            expr: Box::new(strip_paths(expr)),
            negated: *negated,
        },
        ExprKind::InList {
            expr,
            list,
            negated,
        } => ExprKind::InList {
            expr: Box::new(strip_paths(expr)),
            list: list.clone(),
            negated: *negated,
        },
        ExprKind::Str {
            op,
            expr,
            pattern,
            negated,
        } => ExprKind::Str {
            op: *op,
            expr: Box::new(strip_paths(expr)),
            pattern: pattern.clone(),
            negated: *negated,
        },
        other => other.clone(),
    };
    Expr { kind, span: e.span }
}
