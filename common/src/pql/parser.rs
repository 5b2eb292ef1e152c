//! Recursive-descent parser from tokens to [`Query`].
//!
//! Precedence, loosest first: `OR`, `AND`, `NOT`, comparisons (`= != < <= > >=`, `IS NULL`,
//! `IN`, `LIKE`, `CONTAINS`, `STARTS WITH`, `ENDS WITH`), `+ -`, `* /`, unary `-`.

mod expr;

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
}
