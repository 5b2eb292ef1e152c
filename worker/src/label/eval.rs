//! Evaluating bound expressions with SQL's three-valued logic: NULL is unknown, and
//! unknown propagates through comparisons, arithmetic and `NOT`; `AND`/`OR` are Kleene's.

use std::cmp::Ordering;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampSecondArray,
};
use relgraph_common::DType;
use relgraph_common::pql::ast::{ArithOp, CmpOp, StrOp};
use relgraph_common::pql::bound::{BoundExpr, ColumnId, Value};

/// Where an expression's columns and aggregates come from.
pub trait Env {
    fn column(&self, column: ColumnId, dtype: DType) -> Value;
    fn aggregate(&self, index: usize) -> Value;
}

/// The value of `array` (stored as `dtype`) at `row`.
pub fn value_at(array: &ArrayRef, dtype: DType, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    let any = array.as_any();
    let v = match dtype {
        DType::Bool => any
            .downcast_ref::<BooleanArray>()
            .map(|a| Value::Bool(a.value(row))),
        DType::Int64 => any
            .downcast_ref::<Int64Array>()
            .map(|a| Value::Int(a.value(row))),
        DType::Float64 => any
            .downcast_ref::<Float64Array>()
            .map(|a| Value::Float(a.value(row))),
        DType::String => any
            .downcast_ref::<StringArray>()
            .map(|a| Value::Str(a.value(row).to_string())),
        DType::Timestamp => any
            .downcast_ref::<TimestampSecondArray>()
            .map(|a| Value::Time(a.value(row))),
    };
    v.unwrap_or(Value::Null)
}

/// Orders two non-null values of comparable types; `None` if they are not comparable.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) | (Value::Time(x), Value::Time(y)) => Some(x.cmp(y)),
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            a.as_f64()?.partial_cmp(&b.as_f64()?)
        }
        _ => None,
    }
}

fn truth(v: &Value) -> Option<bool> {
    v.as_bool()
}

fn from_truth(b: Option<bool>) -> Value {
    b.map_or(Value::Null, Value::Bool)
}

/// SQL LIKE: `%` any run of characters, `_` any one character; case-sensitive.
pub fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '%')
}

fn arith(op: ArithOp, a: &Value, b: &Value) -> Value {
    if let (Value::Int(x), Value::Int(y), false) = (a, b, op == ArithOp::Div) {
        let r = match op {
            ArithOp::Add => x.checked_add(*y),
            ArithOp::Sub => x.checked_sub(*y),
            _ => x.checked_mul(*y),
        };
        if let Some(r) = r {
            return Value::Int(r);
        }
    }
    let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
        return Value::Null;
    };
    let r = match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div if y == 0.0 => return Value::Null,
        ArithOp::Div => x / y,
    };
    Value::Float(r)
}

/// Evaluates `e`; NULL where SQL would say unknown.
pub fn eval(e: &BoundExpr, env: &impl Env) -> Value {
    match e {
        BoundExpr::Const(v) => v.clone(),
        BoundExpr::Column(c, dtype) => env.column(*c, *dtype),
        BoundExpr::Agg(i) => env.aggregate(*i),
        BoundExpr::Neg(x) => match eval(x, env) {
            Value::Int(i) => i
                .checked_neg()
                .map_or(Value::Float(-(i as f64)), Value::Int),
            Value::Float(f) => Value::Float(-f),
            _ => Value::Null,
        },
        BoundExpr::Not(x) => from_truth(truth(&eval(x, env)).map(|b| !b)),
        BoundExpr::And(a, b) => {
            let (x, y) = (truth(&eval(a, env)), truth(&eval(b, env)));
            from_truth(match (x, y) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            })
        }
        BoundExpr::Or(a, b) => {
            let (x, y) = (truth(&eval(a, env)), truth(&eval(b, env)));
            from_truth(match (x, y) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            })
        }
        BoundExpr::Cmp(op, a, b) => {
            let ord = compare(&eval(a, env), &eval(b, env));
            from_truth(ord.map(|o| match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::Ne => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
            }))
        }
        BoundExpr::Arith(op, a, b) => arith(*op, &eval(a, env), &eval(b, env)),
        BoundExpr::IsNull(x, negated) => Value::Bool((eval(x, env) == Value::Null) != *negated),
        BoundExpr::InList(x, list, negated) => {
            let v = eval(x, env);
            if v == Value::Null {
                return Value::Null;
            }
            if list.iter().any(|l| compare(&v, l) == Some(Ordering::Equal)) {
                Value::Bool(!negated)
            } else if list.contains(&Value::Null) {
                Value::Null
            } else {
                Value::Bool(*negated)
            }
        }
        BoundExpr::Str(op, x, pattern, negated) => match eval(x, env) {
            Value::Str(s) => {
                let hit = match op {
                    StrOp::Like => like(&s, pattern),
                    StrOp::Contains => s.contains(pattern.as_str()),
                    StrOp::StartsWith => s.starts_with(pattern.as_str()),
                    StrOp::EndsWith => s.ends_with(pattern.as_str()),
                };
                Value::Bool(hit != *negated)
            }
            _ => Value::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Consts(Vec<Value>);

    impl Env for Consts {
        fn column(&self, c: ColumnId, _: DType) -> Value {
            self.0[c.column].clone()
        }
        fn aggregate(&self, i: usize) -> Value {
            self.0[i].clone()
        }
    }

    fn b(e: BoundExpr) -> Box<BoundExpr> {
        Box::new(e)
    }

    #[test]
    fn like_matches_sql() {
        assert!(like("Lumen Pro Camera X1", "%Camera%"));
        assert!(like("abc", "a_c") && like("abc", "%") && like("", "%") && like("a%c", "a%c"));
        assert!(!like("abc", "a_") && !like("abc", "b%") && !like("", "_"));
        assert!(like("aXbXc", "%X%c") && !like("aXbXd", "%X%c"));
    }

    #[test]
    fn three_valued_logic() {
        let env = Consts(vec![
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(3),
        ]);
        let (null, t, f) = (BoundExpr::Agg(0), BoundExpr::Agg(1), BoundExpr::Agg(2));
        let and =
            |x: &BoundExpr, y: &BoundExpr| eval(&BoundExpr::And(b(x.clone()), b(y.clone())), &env);
        let or =
            |x: &BoundExpr, y: &BoundExpr| eval(&BoundExpr::Or(b(x.clone()), b(y.clone())), &env);
        assert_eq!(and(&null, &f), Value::Bool(false));
        assert_eq!(and(&null, &t), Value::Null);
        assert_eq!(or(&null, &t), Value::Bool(true));
        assert_eq!(or(&null, &f), Value::Null);
        assert_eq!(eval(&BoundExpr::Not(b(null.clone())), &env), Value::Null);
        let cmp = BoundExpr::Cmp(
            CmpOp::Gt,
            b(BoundExpr::Agg(0)),
            b(BoundExpr::Const(Value::Int(1))),
        );
        assert_eq!(eval(&cmp, &env), Value::Null);
        let in_null = BoundExpr::InList(
            b(BoundExpr::Agg(3)),
            vec![Value::Int(1), Value::Null],
            false,
        );
        assert_eq!(eval(&in_null, &env), Value::Null);
        let not_in = BoundExpr::InList(b(BoundExpr::Agg(3)), vec![Value::Int(3)], true);
        assert_eq!(eval(&not_in, &env), Value::Bool(false));
        let is_null = BoundExpr::IsNull(b(null), false);
        assert_eq!(eval(&is_null, &env), Value::Bool(true));
        let div = BoundExpr::Arith(
            ArithOp::Div,
            b(BoundExpr::Agg(3)),
            b(BoundExpr::Const(Value::Int(0))),
        );
        assert_eq!(eval(&div, &env), Value::Null);
        let mixed = BoundExpr::Cmp(
            CmpOp::Eq,
            b(BoundExpr::Agg(3)),
            b(BoundExpr::Const(Value::Float(3.0))),
        );
        assert_eq!(eval(&mixed, &env), Value::Bool(true));
    }
}
