//! Checking a parsed query against a schema: names (exact, then case-insensitive),
//! types, window directions, foreign-key paths, and the task type (PQL.md §1-4, §6-8).

use super::ast::*;
use super::bound::*;
use super::error::{PqlError, Span};
use crate::schema::{DType, DatabaseSchema, SType, TableSchema};
use crate::schema_file::edit_distance;

/// Longest foreign-key path searched when a multi-hop aggregation names none.
const MAX_HOPS: usize = 4;

/// Where an expression is bound: over entities (with aggregations looking forward or
/// backward), or over the rows of one table (inside an aggregation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Forward,
    Backward,
    Rows(usize),
}

/// Validates `query` against `schema`.
pub fn validate(query: &Query, schema: &DatabaseSchema) -> Result<Task, PqlError> {
    let mut b = Binder {
        schema,
        aggregates: Vec::new(),
        notes: Vec::new(),
        entity: 0,
        backward: Vec::new(),
    };
    b.task(query)
}

struct Binder<'a> {
    schema: &'a DatabaseSchema,
    aggregates: Vec<AggSpec>,
    notes: Vec<String>,
    entity: usize,
    /// Backward windows met in a forward clause: allowed beside a forward one (a target
    /// comparing the future with the past), an error alone.
    backward: Vec<PqlError>,
}

/// The closest of `names` to `wanted`, as a hint.
fn closest<'n>(wanted: &str, names: impl Iterator<Item = &'n str>) -> Option<String> {
    let w = wanted.to_lowercase();
    names
        .map(|n| (edit_distance(&w, &n.to_lowercase()), n))
        .filter(|(d, _)| *d <= (wanted.len() / 3).max(2))
        .min()
        .map(|(_, n)| format!("did you mean `{n}`?"))
}

/// Exact match first, then a unique case-insensitive match.
fn find_name<'n>(
    wanted: &Ident,
    names: impl Iterator<Item = &'n str> + Clone,
    what: &str,
    place: &str,
) -> Result<usize, PqlError> {
    if let Some(i) = names.clone().position(|n| n == wanted.text) {
        return Ok(i);
    }
    let folded: Vec<usize> = names
        .clone()
        .enumerate()
        .filter(|(_, n)| n.eq_ignore_ascii_case(&wanted.text))
        .map(|(i, _)| i)
        .collect();
    match folded.as_slice() {
        [i] => Ok(*i),
        [] => {
            let err = PqlError::new(wanted.span, format!("no {what} `{}`{place}", wanted.text));
            Err(match closest(&wanted.text, names) {
                Some(h) => err.with_hint(h),
                None => err,
            })
        }
        many => {
            let all: Vec<&str> = names.collect();
            let listed: Vec<String> = many.iter().map(|&i| format!("`{}`", all[i])).collect();
            Err(PqlError::new(
                wanted.span,
                format!(
                    "`{}` matches several {what}s{place}: {}",
                    wanted.text,
                    listed.join(", ")
                ),
            )
            .with_hint("write the name with its exact case"))
        }
    }
}

fn literal_value(lit: &Literal) -> (Value, Ty) {
    match lit {
        Literal::Int(i) => (Value::Int(*i), Ty::Num),
        Literal::Float(f) => (Value::Float(*f), Ty::Num),
        Literal::Str(s) => (Value::Str(s.clone()), Ty::Str),
        Literal::Bool(b) => (Value::Bool(*b), Ty::Bool),
        Literal::Null => (Value::Null, Ty::Null),
        Literal::Time(t) => (Value::Time(*t), Ty::Time),
    }
}

/// A quoted date compared with a timestamp is a timestamp.
fn coerce(value: Value, ty: Ty, want: Ty) -> (Value, Ty) {
    match (&value, want) {
        (Value::Str(s), Ty::Time) => match crate::time::parse_timestamp(s) {
            Some(t) => (Value::Time(t), Ty::Time),
            None => (value, ty),
        },
        _ => (value, ty),
    }
}

impl<'a> Binder<'a> {
    fn table(&self, i: usize) -> &'a TableSchema {
        &self.schema.tables[i]
    }

    fn resolve_table(&self, ident: &Ident) -> Result<usize, PqlError> {
        find_name(
            ident,
            self.schema.tables.iter().map(|t| t.name.as_str()),
            "table",
            "",
        )
    }

    fn resolve_column(&self, table: usize, ident: &Ident) -> Result<usize, PqlError> {
        let t = self.table(table);
        find_name(
            ident,
            t.columns.iter().map(|c| c.name.as_str()),
            "column",
            &format!(" in `{}`", t.name),
        )
    }

    fn task(&mut self, q: &Query) -> Result<Task, PqlError> {
        let e = &q.entity;
        self.entity = self.resolve_table(&e.table)?;
        let entity_key = self.entity_key(self.entity, &e.key)?;
        let key_dtype = self.table(self.entity).columns[entity_key].dtype;
        let ids = e
            .ids
            .as_ref()
            .map(|ids| self.entity_ids(ids, key_dtype))
            .transpose()?;
        let (task, target) = match &e.pair {
            Some((table, key)) => self.pair_target(q, table, key)?,
            None => self.target(q)?,
        };
        self.require_forward(self.aggregates.len())?;
        let filter = q
            .filter
            .as_ref()
            .map(|f| self.condition(f, Scope::Backward, "WHERE"))
            .transpose()?;
        let before = self.aggregates.len();
        let assuming = q
            .assuming
            .as_ref()
            .map(|a| self.condition(a, Scope::Forward, "ASSUMING"))
            .transpose()?;
        if let Some(a) = &assuming {
            let mut used = Vec::new();
            a.aggregates(&mut |i| used.push(i));
            if used.iter().all(|&i| i < before) {
                self.backward.clear();
            }
            self.require_forward_in(&used)?;
        }
        Ok(Task {
            mode: q.mode,
            task,
            entity_table: self.entity,
            entity_key,
            ids,
            target,
            filter,
            assuming,
            aggregates: std::mem::take(&mut self.aggregates),
            notes: std::mem::take(&mut self.notes),
        })
    }

    /// A forward clause whose aggregations all look backward is an error.
    fn require_forward(&mut self, upto: usize) -> Result<(), PqlError> {
        let used: Vec<usize> = (0..upto).collect();
        self.require_forward_in(&used)
    }

    fn require_forward_in(&mut self, used: &[usize]) -> Result<(), PqlError> {
        let backward = std::mem::take(&mut self.backward);
        let any_forward = used.iter().any(|&i| self.aggregates[i].window.end > 0);
        match backward.into_iter().next() {
            Some(err) if !any_forward && !used.is_empty() => Err(err),
            _ => Ok(()),
        }
    }

    fn entity_key(&self, table: usize, key: &Ident) -> Result<usize, PqlError> {
        let t = self.table(table);
        let column = self.resolve_column(table, key)?;
        match &t.primary_key {
            Some(pk) if *pk == t.columns[column].name => Ok(column),
            Some(pk) => Err(PqlError::new(
                key.span,
                format!(
                    "`{}` is not the primary key of `{}`",
                    t.columns[column].name, t.name
                ),
            )
            .with_hint(format!("its key is `{pk}`: write {}.{pk}", t.name))),
            None => Err(PqlError::new(
                key.span,
                format!(
                    "`{}` has no primary key, so it cannot be the entity table",
                    t.name
                ),
            )
            .with_hint(
                "predict for a table with a primary key, or set primary_key in schema.toml",
            )),
        }
    }

    fn entity_ids(&self, ids: &[(Literal, Span)], dtype: DType) -> Result<Vec<Value>, PqlError> {
        if ids.len() > 10_000 {
            return Err(PqlError::new(
                ids[10_000].1,
                "at most 10000 entities can be listed in a query",
            )
            .with_hint("pass more through the API"));
        }
        ids.iter()
            .map(|(lit, span)| match (lit, dtype) {
                (Literal::Int(i), DType::Int64) => Ok(Value::Int(*i)),
                (Literal::Str(s), DType::String) => Ok(Value::Str(s.clone())),
                (Literal::Int(i), DType::String) => Ok(Value::Str(i.to_string())),
                _ => Err(PqlError::new(
                    *span,
                    format!("`{lit}` is not a key of type {dtype}"),
                )),
            })
            .collect()
    }

    /// The target of the usual (non-pair) form, and the task it implies.
    fn target(&mut self, q: &Query) -> Result<(TaskType, Target), PqlError> {
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

    fn stype(&self, c: ColumnId) -> SType {
        self.table(c.table).columns[c.column].stype
    }

    /// `t.col` of the entity table itself: a static target.
    fn static_column_target(&self, e: &Expr) -> Result<Option<(ColumnId, DType)>, PqlError> {
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
    fn pair_target(
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
    fn ranking_aggregate(&mut self, a: &Aggregate, span: Span) -> Result<(usize, usize), PqlError> {
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

    fn condition(&mut self, e: &Expr, scope: Scope, clause: &str) -> Result<BoundExpr, PqlError> {
        let (bound, ty) = self.bind(e, scope)?;
        if !matches!(ty, Ty::Bool | Ty::Null) {
            return Err(PqlError::new(
                e.span,
                format!("{clause} needs a condition, not {}", ty.name()),
            )
            .with_hint("compare it, e.g. `> 0`"));
        }
        Ok(bound)
    }

    fn bind(&mut self, e: &Expr, scope: Scope) -> Result<(BoundExpr, Ty), PqlError> {
        let boxed = |b: BoundExpr| Box::new(b);
        Ok(match &e.kind {
            ExprKind::Literal(l) => {
                let (v, ty) = literal_value(l);
                (BoundExpr::Const(v), ty)
            }
            ExprKind::Column(c) => self.column(c, e.span, scope)?,
            ExprKind::Aggregate(a) => match scope {
                Scope::Rows(_) => {
                    return Err(PqlError::new(a.func_span, "aggregations cannot be nested"));
                }
                _ if a.func == AggFunc::ListDistinct => {
                    return Err(PqlError::new(
                        a.func_span,
                        "LIST_DISTINCT is a list: it can only be the whole target of RANK TOP k",
                    ));
                }
                _ => self.aggregate(a, e.span, scope)?,
            },
            ExprKind::Neg(inner) => {
                let (b, ty) = self.bind(inner, scope)?;
                self.expect_ty(ty, Ty::Num, inner.span, "`-`")?;
                (BoundExpr::Neg(boxed(b)), Ty::Num)
            }
            ExprKind::Not(inner) => {
                let b = self.condition(inner, scope, "NOT")?;
                (BoundExpr::Not(boxed(b)), Ty::Bool)
            }
            ExprKind::And(l, r) | ExprKind::Or(l, r) => {
                let word = if matches!(e.kind, ExprKind::And(..)) {
                    "AND"
                } else {
                    "OR"
                };
                let (a, b) = (
                    self.condition(l, scope, word)?,
                    self.condition(r, scope, word)?,
                );
                let kind = if word == "AND" {
                    BoundExpr::And(boxed(a), boxed(b))
                } else {
                    BoundExpr::Or(boxed(a), boxed(b))
                };
                (kind, Ty::Bool)
            }
            ExprKind::Cmp(op, l, r) => self.compare(*op, l, r, scope)?,
            ExprKind::Arith(op, l, r) => {
                let (a, ta) = self.bind(l, scope)?;
                let (b, tb) = self.bind(r, scope)?;
                self.expect_ty(ta, Ty::Num, l.span, "arithmetic")?;
                self.expect_ty(tb, Ty::Num, r.span, "arithmetic")?;
                (BoundExpr::Arith(*op, boxed(a), boxed(b)), Ty::Num)
            }
            ExprKind::IsNull { expr, negated } => {
                let (b, _) = self.bind(expr, scope)?;
                (BoundExpr::IsNull(boxed(b), *negated), Ty::Bool)
            }
            ExprKind::InList {
                expr,
                list,
                negated,
            } => {
                let (b, ty) = self.bind(expr, scope)?;
                let mut values = Vec::with_capacity(list.len());
                for (lit, span) in list {
                    let (v, lt) = literal_value(lit);
                    let (v, lt) = coerce(v, lt, ty);
                    if !ty.comparable(lt) {
                        return Err(PqlError::new(
                            *span,
                            format!("cannot compare {} with {}", ty.name(), lt.name()),
                        ));
                    }
                    values.push(v);
                }
                (BoundExpr::InList(boxed(b), values, *negated), Ty::Bool)
            }
            ExprKind::Str {
                op,
                expr,
                pattern,
                negated,
            } => {
                let (b, ty) = self.bind(expr, scope)?;
                let name = match op {
                    StrOp::Like => "LIKE",
                    StrOp::Contains => "CONTAINS",
                    StrOp::StartsWith => "STARTS WITH",
                    StrOp::EndsWith => "ENDS WITH",
                };
                self.expect_ty(ty, Ty::Str, expr.span, name)?;
                (
                    BoundExpr::Str(*op, boxed(b), pattern.clone(), *negated),
                    Ty::Bool,
                )
            }
        })
    }

    fn expect_ty(&self, got: Ty, want: Ty, span: Span, what: &str) -> Result<(), PqlError> {
        if got == want || got == Ty::Null {
            Ok(())
        } else {
            Err(PqlError::new(
                span,
                format!("{what} needs {}, but this is {}", want.name(), got.name()),
            ))
        }
    }

    fn compare(
        &mut self,
        op: CmpOp,
        l: &Expr,
        r: &Expr,
        scope: Scope,
    ) -> Result<(BoundExpr, Ty), PqlError> {
        let (a, ta) = self.bind(l, scope)?;
        let (b, tb) = self.bind(r, scope)?;
        let (a, ta) = match a {
            BoundExpr::Const(v) => {
                let (v, t) = coerce(v, ta, tb);
                (BoundExpr::Const(v), t)
            }
            other => (other, ta),
        };
        let (b, tb) = match b {
            BoundExpr::Const(v) => {
                let (v, t) = coerce(v, tb, ta);
                (BoundExpr::Const(v), t)
            }
            other => (other, tb),
        };
        if !ta.comparable(tb) {
            return Err(PqlError::new(
                l.span.to(r.span),
                format!("cannot compare {} with {}", ta.name(), tb.name()),
            ));
        }
        if ta == Ty::Bool && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
            return Err(PqlError::new(
                l.span.to(r.span),
                "conditions can only be compared with = and !=",
            ));
        }
        Ok((BoundExpr::Cmp(op, Box::new(a), Box::new(b)), Ty::Bool))
    }

    /// A column outside an aggregation belongs to the entity table; inside, to the
    /// aggregated table.
    fn column(
        &mut self,
        c: &ColumnRef,
        span: Span,
        scope: Scope,
    ) -> Result<(BoundExpr, Ty), PqlError> {
        let last = c
            .path
            .last()
            .ok_or_else(|| PqlError::new(span, "empty column reference"))?;
        let table = self.resolve_table(last)?;
        let Some(col) = &c.column else {
            return Err(
                PqlError::new(span, format!("`{}.*` can only be counted", last.text))
                    .with_hint(format!("write COUNT({}.*, start, end)", last.text)),
            );
        };
        let home = match scope {
            Scope::Rows(t) => t,
            _ => self.entity,
        };
        if table != home || (c.path.len() > 1 && scope != Scope::Rows(home)) {
            let home_name = &self.table(home).name;
            let err = PqlError::new(span, format!("`{c}` is not a column of `{home_name}`"));
            return Err(match scope {
                Scope::Rows(_) => err.with_hint(format!(
                    "inside this aggregation, columns come from `{home_name}`"
                )),
                _ => err.with_hint(format!(
                    "aggregate it, e.g. SUM({c}, -30, 0, days), or use a column of `{home_name}`"
                )),
            });
        }
        let column = self.resolve_column(table, col)?;
        let dtype = self.table(table).columns[column].dtype;
        Ok((
            BoundExpr::Column(ColumnId { table, column }, dtype),
            Ty::of(dtype),
        ))
    }

    fn aggregate(
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

    fn check_function(&self, a: &Aggregate, ty: Ty) -> Result<(), PqlError> {
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
    fn window(&mut self, a: &Aggregate, scope: Scope) -> Result<Window, PqlError> {
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

    /// The foreign keys from `fact` up to the entity table: the path written (`a->b.c`),
    /// else the unique shortest one.
    fn path(&mut self, fact: usize, written: &[Ident], span: Span) -> Result<Vec<Link>, PqlError> {
        if fact == self.entity {
            return Err(PqlError::new(
                span,
                format!(
                    "aggregate a table linked to `{}`, not `{}` itself",
                    self.table(fact).name,
                    self.table(fact).name
                ),
            ));
        }
        if written.len() > 1 {
            return self.written_path(written);
        }
        let mut found: Vec<Vec<Link>> = Vec::new();
        self.search(fact, &mut vec![], &mut found);
        let Some(shortest) = found.iter().map(Vec::len).min() else {
            return Err(PqlError::new(
                span,
                format!(
                    "`{}` is not linked to `{}` by foreign keys",
                    self.table(fact).name,
                    self.table(self.entity).name
                ),
            )
            .with_hint("declare the link with foreign_keys in schema.toml"));
        };
        found.retain(|p| p.len() == shortest);
        let tables = |p: &Vec<Link>| p.iter().map(|l| l.child).collect::<Vec<_>>();
        if found.iter().any(|p| tables(p) != tables(&found[0])) {
            let shown: Vec<String> = found.iter().map(|p| self.show_path(p)).collect();
            let example: Vec<&str> = found[0]
                .iter()
                .rev()
                .map(|l| self.table(l.child).name.as_str())
                .collect();
            return Err(PqlError::new(
                span,
                format!(
                    "`{}` reaches `{}` by several paths: {}",
                    self.table(fact).name,
                    self.table(self.entity).name,
                    shown.join(", ")
                ),
            )
            .with_hint(format!("write the path, e.g. `{}.*`", example.join("->"))));
        }
        self.note_choice(&found);
        Ok(found.swap_remove(0))
    }

    fn note_choice(&mut self, found: &[Vec<Link>]) {
        if found.len() > 1 {
            let chosen = self.show_path(&found[0]);
            let others: Vec<String> = found[1..].iter().map(|p| self.show_path(p)).collect();
            let note = format!(
                "linked through {chosen} (the first foreign key); also possible: {}",
                others.join(", ")
            );
            if !self.notes.contains(&note) {
                self.notes.push(note);
            }
        }
    }

    fn show_path(&self, path: &[Link]) -> String {
        let steps: Vec<String> = path
            .iter()
            .map(|l| {
                format!(
                    "{}.{}",
                    self.table(l.child).name,
                    self.table(l.child).columns[l.column].name
                )
            })
            .collect();
        format!("{} -> {}", steps.join(" -> "), self.table(self.entity).name)
    }

    fn links(&self, child: usize, parent: usize) -> Vec<Link> {
        let t = self.table(child);
        t.foreign_keys
            .iter()
            .filter(|f| self.schema.tables[parent].name == f.references)
            .filter_map(|f| {
                t.column_index(&f.column).map(|column| Link {
                    child,
                    column,
                    parent,
                })
            })
            .collect()
    }

    /// All simple paths from `at` up to the entity table, at most `MAX_HOPS` long.
    fn search(&self, at: usize, path: &mut Vec<Link>, found: &mut Vec<Vec<Link>>) {
        if path.len() >= MAX_HOPS {
            return;
        }
        for parent in 0..self.schema.tables.len() {
            if path.iter().any(|l| l.child == parent) || parent == at {
                continue;
            }
            for link in self.links(at, parent) {
                path.push(link);
                if parent == self.entity {
                    found.push(path.clone());
                } else {
                    self.search(parent, path, found);
                }
                path.pop();
            }
        }
    }

    /// `orders->order_items`: entity <- orders <- order_items (the entity may lead).
    fn written_path(&mut self, written: &[Ident]) -> Result<Vec<Link>, PqlError> {
        let mut tables = vec![self.entity];
        for ident in written {
            let t = self.resolve_table(ident)?;
            if tables.len() == 1 && t == self.entity {
                continue;
            }
            tables.push(t);
        }
        let mut path = Vec::new();
        for pair in tables.windows(2).rev() {
            let (parent, child) = (pair[0], pair[1]);
            let links = self.links(child, parent);
            let Some(first) = links.first().copied() else {
                let ident = written
                    .iter()
                    .find(|i| self.resolve_table(i).ok() == Some(child))
                    .unwrap_or(&written[0]);
                return Err(PqlError::new(
                    ident.span,
                    format!(
                        "`{}` has no foreign key to `{}`",
                        self.table(child).name,
                        self.table(parent).name
                    ),
                ));
            };
            if links.len() > 1 {
                let names: Vec<&str> = links
                    .iter()
                    .map(|l| self.table(child).columns[l.column].name.as_str())
                    .collect();
                self.notes.push(format!(
                    "`{}` links to `{}` through {}; using `{}` (the first)",
                    self.table(child).name,
                    self.table(parent).name,
                    names.join(", "),
                    names[0]
                ));
            }
            path.push(first);
        }
        Ok(path)
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
