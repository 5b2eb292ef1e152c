//! The target of a query and the task it implies (PQL.md §4, §6).

use super::{Binder, Scope};
use crate::pql::ast::*;
use crate::pql::bound::*;
use crate::pql::error::{PqlError, Span};
use crate::schema::{DType, SType};

impl Binder<'_> {
    /// The target of the usual (non-pair) form, and the task it implies.
    pub(super) fn target(&mut self, q: &Query) -> Result<(TaskType, Target), PqlError> {
        let span = q.target.span;
        let problem = q.problem.map(|p| p.0);
        if let ExprKind::Aggregate(a) = &q.target.kind
            && a.func == AggFunc::ListDistinct
        {
            let Some(Problem::RankTop(k)) = problem else {
                return Err(
                    PqlError::new(a.func_span, "LIST_DISTINCT predicts a list of items")
                        .with_hint("add RANK TOP k, e.g. RANK TOP 10"),
                );
            };
            let (i, items) = self.ranking_aggregate(a, span)?;
            return Ok((TaskType::Ranking { k, items }, Target::Items(i)));
        }
        if let Some((Problem::RankTop(_), ps)) = q.problem {
            return Err(PqlError::new(
                ps,
                "RANK TOP k needs a LIST_DISTINCT target (or the pair form)",
            )
            .with_hint("write LIST_DISTINCT(table.fk, 0, 14, days) RANK TOP k"));
        }
        if let Some(t) = self.static_column_target(&q.target)? {
            let task = match (t.1, problem) {
                (_, Some(Problem::Forecast(_))) => {
                    return Err(PqlError::new(
                        span,
                        "FORECAST needs an aggregation over time, not a column",
                    ));
                }
                (DType::Float64 | DType::Int64, None) if self.stype(t.0) == SType::Numerical => {
                    TaskType::Regression
                }
                (DType::Timestamp, _) => {
                    return Err(PqlError::new(span, "a timestamp column cannot be a target")
                        .with_hint("predict an aggregation or a condition instead"));
                }
                _ => TaskType::Multiclass,
            };
            return Ok((task, Target::Column(t.0, t.1)));
        }
        let (expr, ty) = self.bind(&q.target, Scope::Forward)?;
        match (ty, problem) {
            (Ty::Num, Some(Problem::Forecast(steps))) => match expr {
                BoundExpr::Agg(i) => Ok((TaskType::Forecast { steps }, Target::Forecast(i))),
                _ => Err(PqlError::new(
                    span,
                    "FORECAST needs a single numeric aggregation as its target",
                )),
            },
            (_, Some(Problem::Forecast(_))) => Err(PqlError::new(
                span,
                format!("FORECAST needs a numeric target, not {}", ty.name()),
            )),
            (Ty::Bool, _) => Ok((TaskType::Binary, Target::Expr(expr))),
            (Ty::Num, None) => Ok((TaskType::Regression, Target::Expr(expr))),
            (Ty::Num | Ty::Str, Some(Problem::Classify)) | (Ty::Str, None) => {
                Ok((TaskType::Multiclass, Target::Expr(expr)))
            }
            (ty, _) => Err(
                PqlError::new(span, format!("{} cannot be a target", ty.name()))
                    .with_hint("predict a condition, a number or a category"),
            ),
        }
    }

    pub(super) fn stype(&self, c: ColumnId) -> SType {
        self.table(c.table).columns[c.column].stype
    }

    /// `t.col` of the entity table itself: a static target.
    pub(super) fn static_column_target(
        &self,
        e: &Expr,
    ) -> Result<Option<(ColumnId, DType)>, PqlError> {
        let ExprKind::Column(c) = &e.kind else {
            return Ok(None);
        };
        let (Some(col), [table]) = (&c.column, c.path.as_slice()) else {
            return Ok(None);
        };
        let t = self.resolve_table(table)?;
        if t != self.entity {
            return Ok(None);
        }
        let column = self.resolve_column(t, col)?;
        if self.table(t).primary_key.as_deref() == Some(self.table(t).columns[column].name.as_str())
        {
            return Err(PqlError::new(e.span, "the primary key cannot be a target"));
        }
        Ok(Some((
            ColumnId { table: t, column },
            self.table(t).columns[column].dtype,
        )))
    }

    /// `PREDICT BOOL(t.fk, ...) FOR EACH a.pk, b.pk RANK TOP k` (§6).
    pub(super) fn pair_target(
        &mut self,
        q: &Query,
        table: &Ident,
        key: &Ident,
    ) -> Result<(TaskType, Target), PqlError> {
        let items = self.resolve_table(table)?;
        self.entity_key(items, key)?;
        let ExprKind::Aggregate(a) = &q.target.kind else {
            return Err(PqlError::new(
                q.target.span,
                "the pair form predicts BOOL(table.fk, start, end) per pair",
            )
            .with_hint(format!(
                "write BOOL(<fact table>.<key of {}>, 0, 14, days)",
                self.table(items).name
            )));
        };
        if a.func != AggFunc::Bool {
            return Err(PqlError::new(
                a.func_span,
                format!("the pair form takes BOOL, not {}", a.func.name()),
            )
            .with_hint("write BOOL(table.fk, 0, 14, days)"));
        }
        let Some((Problem::RankTop(k), _)) = q.problem else {
            return Err(PqlError::new(
                q.target.span.to(table.span),
                "the pair form ranks items: add RANK TOP k",
            ));
        };
        let (i, found) = self.ranking_aggregate(a, q.target.span)?;
        if found != items {
            return Err(PqlError::new(
                a.arg.span,
                format!(
                    "this column links to `{}`, but the pair names `{}`",
                    self.table(found).name,
                    self.table(items).name
                ),
            ));
        }
        self.aggregates[i].func = AggFunc::ListDistinct;
        Ok((TaskType::Ranking { k, items }, Target::Items(i)))
    }

    /// Binds a ranking aggregation; returns its index and the items table.
    pub(super) fn ranking_aggregate(
        &mut self,
        a: &Aggregate,
        span: Span,
    ) -> Result<(usize, usize), PqlError> {
        let (bound, _) = self.aggregate(a, span, Scope::Forward)?;
        let BoundExpr::Agg(i) = bound else {
            return Err(PqlError::new(
                span,
                "internal error: an aggregation did not bind to an aggregate",
            ));
        };
        let spec = &self.aggregates[i];
        let fact = self.table(spec.table);
        let fk = match &spec.arg {
            Some(BoundExpr::Column(c, _)) => fact
                .foreign_keys
                .iter()
                .find(|f| f.column == fact.columns[c.column].name),
            _ => None,
        };
        let Some(fk) = fk else {
            return Err(PqlError::new(
                a.arg.span,
                format!(
                    "{} ranks the rows a foreign key points at; this is not a foreign key of `{}`",
                    a.func.name(),
                    fact.name
                ),
            )
            .with_hint(format!(
                "use one of: {}",
                fact.foreign_keys
                    .iter()
                    .map(|f| format!("{}.{}", fact.name, f.column))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let items = self
            .schema
            .tables
            .iter()
            .position(|t| t.name == fk.references)
            .unwrap_or(spec.table);
        Ok((i, items))
    }
}
