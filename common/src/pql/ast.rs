//! The syntax tree of a predictive query, with source spans for error messages.

use std::fmt;

use super::error::Span;

/// A name as written, with its place.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Predict,
    /// `EVALUATE PREDICT ...`: report metrics on the test split.
    Evaluate,
    /// `EXPLAIN PREDICT ...`: attach explanations to predictions.
    Explain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    RankTop(u32),
    Classify,
    Forecast(u32),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
    /// Seconds since the epoch.
    Time(i64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct EntitySpec {
    pub table: Ident,
    pub key: Ident,
    /// `FOR t.pk = x` / `IN (...)`: the named entities only.
    pub ids: Option<Vec<(Literal, Span)>>,
    /// The pair form's second `table.pk` (§6).
    pub pair: Option<(Ident, Ident)>,
    /// `FOR EACH` (true) or `FOR` (false).
    pub each: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub mode: Mode,
    pub target: Expr,
    pub problem: Option<(Problem, Span)>,
    pub entity: EntitySpec,
    pub filter: Option<Expr>,
    pub assuming: Option<Expr>,
}

/// `a->b->c.col`, `t.col` or `t.*`: the tables walked, then the column.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnRef {
    pub path: Vec<Ident>,
    /// `None` for `*`.
    pub column: Option<Ident>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggFunc {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    CountDistinct,
    First,
    Last,
    ListDistinct,
    Bool,
}

impl AggFunc {
    pub const ALL: [(&'static str, AggFunc); 10] = [
        ("COUNT", AggFunc::Count),
        ("SUM", AggFunc::Sum),
        ("AVG", AggFunc::Avg),
        ("MIN", AggFunc::Min),
        ("MAX", AggFunc::Max),
        ("COUNT_DISTINCT", AggFunc::CountDistinct),
        ("FIRST", AggFunc::First),
        ("LAST", AggFunc::Last),
        ("LIST_DISTINCT", AggFunc::ListDistinct),
        ("BOOL", AggFunc::Bool),
    ];

    pub fn from_name(name: &str) -> Option<AggFunc> {
        Self::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, f)| *f)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    /// Whether an empty window has a value (0 / false) rather than none (§3).
    pub fn defined_on_empty(self) -> bool {
        matches!(
            self,
            AggFunc::Count | AggFunc::Sum | AggFunc::CountDistinct | AggFunc::Bool
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeUnit {
    Seconds,
    Minutes,
    Hours,
    Days,
    Weeks,
    Months,
}

impl TimeUnit {
    pub const ALL: [(&'static str, TimeUnit); 6] = [
        ("seconds", TimeUnit::Seconds),
        ("minutes", TimeUnit::Minutes),
        ("hours", TimeUnit::Hours),
        ("days", TimeUnit::Days),
        ("weeks", TimeUnit::Weeks),
        ("months", TimeUnit::Months),
    ];

    /// Accepts the plural, the singular, any case.
    pub fn from_name(name: &str) -> Option<TimeUnit> {
        let lower = name.to_ascii_lowercase();
        Self::ALL
            .iter()
            .find(|(n, _)| *n == lower || n.strip_suffix('s') == Some(&lower))
            .map(|(_, u)| *u)
    }

    pub fn seconds(self) -> i64 {
        match self {
            TimeUnit::Seconds => 1,
            TimeUnit::Minutes => 60,
            TimeUnit::Hours => 3_600,
            TimeUnit::Days => 86_400,
            TimeUnit::Weeks => 7 * 86_400,
            TimeUnit::Months => 30 * 86_400,
        }
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, u)| *u == self)
            .map_or("?", |(n, _)| n)
    }
}

/// A window bound in units; `None` is `-INF`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    pub value: Option<f64>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    pub func: AggFunc,
    pub func_span: Span,
    pub arg: Box<Expr>,
    pub filter: Option<Box<Expr>>,
    pub start: Bound,
    pub end: Bound,
    pub unit: TimeUnit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

impl ArithOp {
    pub fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
        }
    }
}

impl StrOp {
    pub fn keyword(self) -> &'static str {
        match self {
            StrOp::Like => "LIKE",
            StrOp::Contains => "CONTAINS",
            StrOp::StartsWith => "STARTS WITH",
            StrOp::EndsWith => "ENDS WITH",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrOp {
    Like,
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Literal(Literal),
    Column(ColumnRef),
    Aggregate(Aggregate),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<(Literal, Span)>,
        negated: bool,
    },
    Str {
        op: StrOp,
        expr: Box<Expr>,
        pattern: String,
        negated: bool,
    },
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::Str(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Literal::Bool(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Literal::Null => f.write_str("NULL"),
            Literal::Time(t) => write!(f, "{}", crate::time::format_timestamp(*t)),
        }
    }
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path: Vec<&str> = self.path.iter().map(|p| p.text.as_str()).collect();
        let column = self.column.as_ref().map_or("*", |c| c.text.as_str());
        write!(f, "{}.{column}", path.join("->"))
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            None => f.write_str("-INF"),
            Some(v) => write!(f, "{v}"),
        }
    }
}

impl fmt::Display for Expr {
    /// Fully parenthesised, canonical form: what the parser understood.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Literal(l) => write!(f, "{l}"),
            ExprKind::Column(c) => write!(f, "{c}"),
            ExprKind::Aggregate(a) => {
                write!(f, "{}({}", a.func.name(), a.arg)?;
                if let Some(w) = &a.filter {
                    write!(f, " WHERE {w}")?;
                }
                write!(f, ", {}, {}, {})", a.start, a.end, a.unit.name())
            }
            ExprKind::Neg(e) => write!(f, "(-{e})"),
            ExprKind::Not(e) => write!(f, "(NOT {e})"),
            ExprKind::And(a, b) => write!(f, "({a} AND {b})"),
            ExprKind::Or(a, b) => write!(f, "({a} OR {b})"),
            ExprKind::Cmp(op, a, b) => {
                let s = op.symbol();
                write!(f, "({a} {s} {b})")
            }
            ExprKind::Arith(op, a, b) => {
                let s = op.symbol();
                write!(f, "({a} {s} {b})")
            }
            ExprKind::IsNull { expr, negated } => {
                write!(f, "({expr} IS {}NULL)", if *negated { "NOT " } else { "" })
            }
            ExprKind::InList {
                expr,
                list,
                negated,
            } => {
                let items: Vec<String> = list.iter().map(|(l, _)| l.to_string()).collect();
                write!(
                    f,
                    "({expr} {}IN ({}))",
                    if *negated { "NOT " } else { "" },
                    items.join(", ")
                )
            }
            ExprKind::Str {
                op,
                expr,
                pattern,
                negated,
            } => {
                let s = op.keyword();
                let not = if *negated { "NOT " } else { "" };
                write!(f, "({expr} {not}{s} {})", Literal::Str(pattern.clone()))
            }
        }
    }
}
