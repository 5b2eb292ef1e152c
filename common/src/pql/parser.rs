//! Recursive-descent parser from tokens to [`Query`].
//!
//! Precedence, loosest first: `OR`, `AND`, `NOT`, comparisons (`= != < <= > >=`, `IS NULL`,
//! `IN`, `LIKE`, `CONTAINS`, `STARTS WITH`, `ENDS WITH`), `+ -`, `* /`, unary `-`.

use super::ast::*;
use super::error::{PqlError, Span};
use super::lexer::{Tok, Token, tokenize};
use crate::schema_file::edit_distance;

/// Deepest nesting of parentheses and operators a query may have.
const MAX_DEPTH: usize = 128;

const KEYWORDS: [&str; 26] = [
    "PREDICT",
    "EVALUATE",
    "EXPLAIN",
    "FOR",
    "EACH",
    "IN",
    "WHERE",
    "ASSUMING",
    "RANK",
    "TOP",
    "CLASSIFY",
    "FORECAST",
    "TIMEFRAMES",
    "AND",
    "OR",
    "NOT",
    "IS",
    "NULL",
    "TRUE",
    "FALSE",
    "LIKE",
    "CONTAINS",
    "STARTS",
    "ENDS",
    "WITH",
    "INF",
];

/// Parses one query.
pub fn parse(text: &str) -> Result<Query, PqlError> {
    let tokens = tokenize(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    p.query()
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

fn keyword_hint(word: &str) -> Option<String> {
    let upper = word.to_ascii_uppercase();
    if KEYWORDS.contains(&upper.as_str()) {
        return None;
    }
    let candidates = KEYWORDS
        .iter()
        .copied()
        .chain(AggFunc::ALL.iter().map(|(n, _)| *n));
    candidates
        .map(|k| (edit_distance(&upper, k), k))
        .filter(|&(d, k)| d > 0 && d <= (k.len() / 3).max(1))
        .min()
        .map(|(_, k)| format!("did you mean {k}?"))
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        &self.tokens[(self.pos + ahead).min(self.tokens.len() - 1)].tok
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn prev_span(&self) -> Span {
        self.tokens[self.pos.saturating_sub(1)].span
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn is_kw_at(&self, ahead: usize, kw: &str) -> bool {
        matches!(self.peek_at(ahead), Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let hit = self.is_kw(kw);
        if hit {
            self.bump();
        }
        hit
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        let hit = &self.peek().tok == tok;
        if hit {
            self.bump();
        }
        hit
    }

    /// An error at the current token: "expected X, found Y", with a keyword hint.
    fn expected(&self, what: &str) -> PqlError {
        let t = self.peek();
        let err = PqlError::new(
            t.span,
            format!("expected {what}, found {}", t.tok.describe()),
        );
        match &t.tok {
            Tok::Word(w) => match keyword_hint(w) {
                Some(h) => err.with_hint(h),
                None => err,
            },
            _ => err,
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<Span, PqlError> {
        if self.is_kw(kw) {
            Ok(self.bump().span)
        } else {
            Err(self.expected(kw))
        }
    }

    fn expect(&mut self, tok: Tok) -> Result<Span, PqlError> {
        if self.peek().tok == tok {
            Ok(self.bump().span)
        } else {
            Err(self.expected(&tok.describe()))
        }
    }

    fn ident(&mut self, what: &str) -> Result<Ident, PqlError> {
        match &self.peek().tok {
            Tok::Word(w) => {
                let ident = Ident {
                    text: w.clone(),
                    span: self.peek().span,
                };
                self.bump();
                Ok(ident)
            }
            _ => Err(self.expected(what)),
        }
    }

    fn query(&mut self) -> Result<Query, PqlError> {
        let mode = if self.eat_kw("EVALUATE") {
            Mode::Evaluate
        } else if self.eat_kw("EXPLAIN") {
            Mode::Explain
        } else {
            Mode::Predict
        };
        self.expect_kw("PREDICT")?;
        let target = self.expr()?;
        let mut problem = self.problem()?;
        if !self.is_kw("FOR") {
            return Err(self.expected(if problem.is_some() {
                "FOR"
            } else {
                "an operator or FOR"
            }));
        }
        let entity = self.entity()?;
        if let Some(second) = self.problem()? {
            if let Some((_, first)) = problem {
                return Err(
                    PqlError::new(second.1, "the problem is given twice").with_hint(format!(
                        "keep one (the other is at column {})",
                        first.start + 1
                    )),
                );
            }
            problem = Some(second);
        }
        let (mut filter, mut assuming) = (None, None);
        loop {
            let slot = if self.is_kw("WHERE") {
                &mut filter
            } else if self.is_kw("ASSUMING") {
                &mut assuming
            } else {
                break;
            };
            let kw = self.bump();
            if slot.is_some() {
                return Err(PqlError::new(kw.span, "this clause is given twice")
                    .with_hint("combine the conditions with AND"));
            }
            *slot = Some(self.expr()?);
        }
        if self.peek().tok != Tok::Eof {
            return Err(self.expected("WHERE, ASSUMING or the end of the query"));
        }
        Ok(Query {
            mode,
            target,
            problem,
            entity,
            filter,
            assuming,
        })
    }

    fn problem(&mut self) -> Result<Option<(Problem, Span)>, PqlError> {
        let start = self.peek().span;
        let problem = if self.eat_kw("RANK") {
            self.expect_kw("TOP")?;
            Problem::RankTop(self.count("k of RANK TOP k")?)
        } else if self.eat_kw("CLASSIFY") {
            Problem::Classify
        } else if self.eat_kw("FORECAST") {
            let n = self.count("the number of timeframes")?;
            self.expect_kw("TIMEFRAMES")?;
            Problem::Forecast(n)
        } else {
            return Ok(None);
        };
        Ok(Some((problem, start.to(self.prev_span()))))
    }

    fn count(&mut self, what: &str) -> Result<u32, PqlError> {
        match self.peek().tok {
            Tok::Int(n) if (1..=100_000).contains(&n) => {
                self.bump();
                Ok(n as u32)
            }
            Tok::Int(_) => Err(PqlError::new(
                self.peek().span,
                format!("{what} must be between 1 and 100000"),
            )),
            _ => Err(self.expected(&format!("{what} (a positive integer)"))),
        }
    }

    fn entity(&mut self) -> Result<EntitySpec, PqlError> {
        self.expect_kw("FOR")?;
        let each = self.eat_kw("EACH");
        let (table, key) = self.table_key()?;
        let ids = if self.eat(&Tok::Eq) {
            let lit = self.literal()?;
            Some(vec![lit])
        } else if self.eat_kw("IN") {
            Some(self.literal_list()?)
        } else {
            None
        };
        if each && ids.is_some() {
            return Err(PqlError::new(
                table.span.to(self.prev_span()),
                "FOR EACH scores every entity; it takes no `=` or IN",
            )
            .with_hint("write FOR (without EACH) to name entities"));
        }
        let pair = if self.eat(&Tok::Comma) {
            Some(self.table_key()?)
        } else {
            None
        };
        Ok(EntitySpec {
            table,
            key,
            ids,
            pair,
            each,
        })
    }

    fn table_key(&mut self) -> Result<(Ident, Ident), PqlError> {
        let table = self.ident("a table name")?;
        if !self.eat(&Tok::Dot) {
            return Err(self
                .expected("`.` and the primary key column")
                .with_hint(format!("write {}.<key column>", table.text)));
        }
        let key = self.ident("a key column")?;
        Ok((table, key))
    }

    fn literal(&mut self) -> Result<(Literal, Span), PqlError> {
        let start = self.peek().span;
        let negative = self.eat(&Tok::Minus);
        let t = self.bump();
        let lit = match (t.tok, negative) {
            (Tok::Int(i), neg) => Literal::Int(if neg { -i } else { i }),
            (Tok::Float(f), neg) => Literal::Float(if neg { -f } else { f }),
            (Tok::Str(s), false) => Literal::Str(s),
            (Tok::Time(t), false) => Literal::Time(t),
            (Tok::Word(w), false) if w.eq_ignore_ascii_case("TRUE") => Literal::Bool(true),
            (Tok::Word(w), false) if w.eq_ignore_ascii_case("FALSE") => Literal::Bool(false),
            (Tok::Word(w), false) if w.eq_ignore_ascii_case("NULL") => Literal::Null,
            (tok, _) => {
                return Err(PqlError::new(
                    t.span,
                    format!("expected a value, found {}", tok.describe()),
                ));
            }
        };
        Ok((lit, start.to(self.prev_span())))
    }

    fn literal_list(&mut self) -> Result<Vec<(Literal, Span)>, PqlError> {
        self.expect(Tok::LParen)?;
        let mut list = vec![self.literal()?];
        while self.eat(&Tok::Comma) {
            list.push(self.literal()?);
        }
        self.expect(Tok::RParen)?;
        Ok(list)
    }

    fn nested<T>(
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

    fn or(&mut self) -> Result<Expr, PqlError> {
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

    fn and(&mut self) -> Result<Expr, PqlError> {
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

    fn not(&mut self) -> Result<Expr, PqlError> {
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

    fn comparison(&mut self) -> Result<Expr, PqlError> {
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
    fn predicate(&mut self, left: Expr) -> Result<Expr, PqlError> {
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

    fn arith(&mut self) -> Result<Expr, PqlError> {
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

    fn term(&mut self) -> Result<Expr, PqlError> {
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

    fn unary(&mut self) -> Result<Expr, PqlError> {
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

    fn primary(&mut self) -> Result<Expr, PqlError> {
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
    fn column_ref(&mut self) -> Result<ColumnRef, PqlError> {
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

    fn aggregate(&mut self, func: AggFunc, func_span: Span) -> Result<Expr, PqlError> {
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

    fn bound(&mut self) -> Result<Bound, PqlError> {
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

    fn unit(&mut self) -> Result<TimeUnit, PqlError> {
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
