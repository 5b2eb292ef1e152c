//! Expressions: conditions, comparisons, arithmetic, columns, literals and aggregations.

use super::{KEYWORDS, MAX_DEPTH, Parser, keyword_hint};
use crate::pql::ast::*;
use crate::pql::error::{PqlError, Span};
use crate::pql::lexer::{Tok, Token};

impl Parser {
    pub(super) fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, PqlError>,
    ) -> Result<T, PqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(PqlError::new(
                self.peek().span,
                "the query nests too deeply",
            ));
        }
        let out = f(self);
        self.depth -= 1;
        out
    }

    pub(super) fn expr(&mut self) -> Result<Expr, PqlError> {
        self.nested(Self::or)
    }

    pub(super) fn or(&mut self) -> Result<Expr, PqlError> {
        let mut left = self.and()?;
        while self.eat_kw("OR") {
            let right = self.and()?;
            let span = left.span.to(right.span);
            left = Expr {
                kind: ExprKind::Or(Box::new(left), Box::new(right)),
                span,
            };
        }
        Ok(left)
    }

    pub(super) fn and(&mut self) -> Result<Expr, PqlError> {
        let mut left = self.not()?;
        while self.eat_kw("AND") {
            let right = self.not()?;
            let span = left.span.to(right.span);
            left = Expr {
                kind: ExprKind::And(Box::new(left), Box::new(right)),
                span,
            };
        }
        Ok(left)
    }

    pub(super) fn not(&mut self) -> Result<Expr, PqlError> {
        if self.is_kw("NOT") {
            let start = self.bump().span;
            let inner = self.nested(Self::not)?;
            let span = start.to(inner.span);
            return Ok(Expr {
                kind: ExprKind::Not(Box::new(inner)),
                span,
            });
        }
        self.comparison()
    }

    pub(super) fn comparison(&mut self) -> Result<Expr, PqlError> {
        let left = self.arith()?;
        let op = match self.peek().tok {
            Tok::Eq => Some(CmpOp::Eq),
            Tok::Ne => Some(CmpOp::Ne),
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Le => Some(CmpOp::Le),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Ge => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            self.bump();
            let right = self.arith()?;
            let span = left.span.to(right.span);
            return Ok(Expr {
                kind: ExprKind::Cmp(op, Box::new(left), Box::new(right)),
                span,
            });
        }
        self.predicate(left)
    }

    /// `IS [NOT] NULL`, `[NOT] IN (...)`, `[NOT] LIKE`, `CONTAINS`, `STARTS WITH`, `ENDS WITH`.
    pub(super) fn predicate(&mut self, left: Expr) -> Result<Expr, PqlError> {
        let expr = Box::new(left);
        if self.eat_kw("IS") {
            let negated = self.eat_kw("NOT");
            self.expect_kw("NULL")?;
            let span = expr.span.to(self.prev_span());
            return Ok(Expr {
                kind: ExprKind::IsNull { expr, negated },
                span,
            });
        }
        let negated = self.is_kw("NOT")
            && (self.is_kw_at(1, "IN") || self.is_kw_at(1, "LIKE") || self.is_kw_at(1, "CONTAINS"));
        if negated {
            self.bump();
        }
        if self.eat_kw("IN") {
            let list = self.literal_list()?;
            let span = expr.span.to(self.prev_span());
            return Ok(Expr {
                kind: ExprKind::InList {
                    expr,
                    list,
                    negated,
                },
                span,
            });
        }
        let op = if self.eat_kw("LIKE") {
            StrOp::Like
        } else if self.eat_kw("CONTAINS") {
            StrOp::Contains
        } else if self.is_kw("STARTS") || self.is_kw("ENDS") {
            let starts = self.is_kw("STARTS");
            self.bump();
            self.expect_kw("WITH")?;
            if starts {
                StrOp::StartsWith
            } else {
                StrOp::EndsWith
            }
        } else if negated {
            return Err(self.expected("IN, LIKE or CONTAINS after NOT"));
        } else {
            return Ok(*expr);
        };
        let pattern = match self.bump() {
            Token {
                tok: Tok::Str(s), ..
            } => s,
            t => {
                return Err(PqlError::new(
                    t.span,
                    format!("expected a quoted string, found {}", t.tok.describe()),
                ));
            }
        };
        let span = expr.span.to(self.prev_span());
        Ok(Expr {
            kind: ExprKind::Str {
                op,
                expr,
                pattern,
                negated,
            },
            span,
        })
    }

    pub(super) fn arith(&mut self) -> Result<Expr, PqlError> {
        let mut left = self.term()?;
        loop {
            let op = match self.peek().tok {
                Tok::Plus => ArithOp::Add,
                Tok::Minus => ArithOp::Sub,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.term()?;
            let span = left.span.to(right.span);
            left = Expr {
                kind: ExprKind::Arith(op, Box::new(left), Box::new(right)),
                span,
            };
        }
    }

    pub(super) fn term(&mut self) -> Result<Expr, PqlError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek().tok {
                Tok::Star => ArithOp::Mul,
                Tok::Slash => ArithOp::Div,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.unary()?;
            let span = left.span.to(right.span);
            left = Expr {
                kind: ExprKind::Arith(op, Box::new(left), Box::new(right)),
                span,
            };
        }
    }

    pub(super) fn unary(&mut self) -> Result<Expr, PqlError> {
        if self.peek().tok == Tok::Minus {
            let start = self.bump().span;
            let inner = self.nested(Self::unary)?;
            let span = start.to(inner.span);
            let kind = match inner.kind {
                ExprKind::Literal(Literal::Int(i)) => ExprKind::Literal(Literal::Int(-i)),
                ExprKind::Literal(Literal::Float(f)) => ExprKind::Literal(Literal::Float(-f)),
                other => ExprKind::Neg(Box::new(Expr {
                    kind: other,
                    span: inner.span,
                })),
            };
            return Ok(Expr { kind, span });
        }
        self.primary()
    }

    pub(super) fn primary(&mut self) -> Result<Expr, PqlError> {
        let t = self.peek().clone();
        match &t.tok {
            Tok::LParen => {
                self.bump();
                let inner = self.expr()?;
                self.expect(Tok::RParen)?;
                Ok(Expr {
                    kind: inner.kind,
                    span: t.span.to(self.prev_span()),
                })
            }
            Tok::Int(_) | Tok::Float(_) | Tok::Str(_) | Tok::Time(_) => {
                let (lit, span) = self.literal()?;
                Ok(Expr {
                    kind: ExprKind::Literal(lit),
                    span,
                })
            }
            Tok::Word(w)
                if ["TRUE", "FALSE", "NULL"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                let (lit, span) = self.literal()?;
                Ok(Expr {
                    kind: ExprKind::Literal(lit),
                    span,
                })
            }
            Tok::Word(w) if *self.peek_at(1) == Tok::LParen => {
                let Some(func) = AggFunc::from_name(w) else {
                    let err = PqlError::new(t.span, format!("unknown aggregation `{w}`"));
                    let names: Vec<&str> = AggFunc::ALL.iter().map(|(n, _)| *n).collect();
                    return Err(match keyword_hint(w) {
                        Some(h) => err.with_hint(h),
                        None => err.with_hint(format!("use one of {}", names.join(", "))),
                    });
                };
                self.bump();
                self.aggregate(func, t.span)
            }
            Tok::Word(w) if KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                Err(self.expected("a column, a value or an aggregation"))
            }
            Tok::Word(_) => {
                let column = self.column_ref()?;
                Ok(Expr {
                    kind: ExprKind::Column(column),
                    span: t.span.to(self.prev_span()),
                })
            }
            _ => Err(self.expected("a column, a value or an aggregation")),
        }
    }

    /// `t.col`, `t.*`, `a->b.col`.
    pub(super) fn column_ref(&mut self) -> Result<ColumnRef, PqlError> {
        let mut path = vec![self.ident("a table name")?];
        while self.eat(&Tok::Arrow) {
            path.push(self.ident("a table name after ->")?);
        }
        if !self.eat(&Tok::Dot) {
            let last = path.last().map_or("t", |p| p.text.as_str()).to_string();
            let err = self.expected("`.` and a column name");
            return Err(match keyword_hint(&last) {
                Some(h) => PqlError::new(
                    self.prev_span(),
                    format!("`{last}` is not a keyword or a column"),
                )
                .with_hint(h),
                None => err.with_hint(format!("columns are written table.column, e.g. {last}.id")),
            });
        }
        let column = if self.eat(&Tok::Star) {
            None
        } else {
            Some(self.ident("a column name or *")?)
        };
        Ok(ColumnRef { path, column })
    }

    pub(super) fn aggregate(&mut self, func: AggFunc, func_span: Span) -> Result<Expr, PqlError> {
        self.expect(Tok::LParen)?;
        let arg = self.nested(Self::arith)?;
        let filter = if self.eat_kw("WHERE") {
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        if self.peek().tok == Tok::RParen {
            return Err(PqlError::new(
                self.peek().span,
                format!("{} needs a time window", func.name()),
            )
            .with_hint(format!("write {}({arg}, 0, 30, days)", func.name())));
        }
        self.expect(Tok::Comma)?;
        let start = self.bound()?;
        self.expect(Tok::Comma)?;
        let end = self.bound()?;
        let unit = if self.eat(&Tok::Comma) {
            self.unit()?
        } else {
            TimeUnit::Days
        };
        self.expect(Tok::RParen)?;
        let span = func_span.to(self.prev_span());
        let agg = Aggregate {
            func,
            func_span,
            arg: Box::new(arg),
            filter,
            start,
            end,
            unit,
        };
        Ok(Expr {
            kind: ExprKind::Aggregate(agg),
            span,
        })
    }

    pub(super) fn bound(&mut self) -> Result<Bound, PqlError> {
        let start = self.peek().span;
        let sign = if self.eat(&Tok::Minus) {
            -1.0
        } else {
            self.eat(&Tok::Plus);
            1.0
        };
        let t = self.bump();
        let value = match t.tok {
            Tok::Int(i) => Some(sign * i as f64),
            Tok::Float(f) => Some(sign * f),
            Tok::Word(w) if w.eq_ignore_ascii_case("INF") && sign < 0.0 => None,
            Tok::Word(w) if w.eq_ignore_ascii_case("INF") => {
                return Err(PqlError::new(t.span, "a window cannot end at +INF")
                    .with_hint("give a finite end"));
            }
            tok => {
                return Err(PqlError::new(
                    t.span,
                    format!(
                        "expected a window bound (a number or -INF), found {}",
                        tok.describe()
                    ),
                ));
            }
        };
        Ok(Bound {
            value,
            span: start.to(self.prev_span()),
        })
    }

    pub(super) fn unit(&mut self) -> Result<TimeUnit, PqlError> {
        let t = self.bump();
        let Tok::Word(w) = &t.tok else {
            return Err(PqlError::new(
                t.span,
                format!("expected a time unit, found {}", t.tok.describe()),
            ));
        };
        TimeUnit::from_name(w).ok_or_else(|| {
            let names = TimeUnit::ALL.iter().map(|(n, _)| *n);
            let hint = crate::schema_file::suggest(w, names);
            let err = PqlError::new(t.span, format!("unknown time unit `{w}`"));
            match hint.strip_prefix("; ") {
                Some(h) => err.with_hint(h.to_string()),
                None => err.with_hint("use seconds, minutes, hours, days, weeks or months"),
            }
        })
    }
}
