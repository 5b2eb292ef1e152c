//! Checking a parsed query against a schema: names (exact, then case-insensitive),
//! types, window directions, foreign-key paths, and the task type (PQL.md §1-4, §6-8).

mod aggregate;
mod path;
mod target;

use super::ast::*;
use super::bound::*;
use super::error::{PqlError, Span};
use crate::schema::{DType, DatabaseSchema, TableSchema};
use crate::schema_file::edit_distance;

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
                let name = op.keyword();
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
}
