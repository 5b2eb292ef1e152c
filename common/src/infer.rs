//! Guessing what the files do not say: column types, keys, time columns, links.
//!
//! Every guess here can be seen with `relgraph inspect` and overridden in `schema.toml`.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampSecondArray,
};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::schema::{DType, SType};
use crate::time::parse_timestamp;

/// Share of a column's values that must read as timestamps for the column to be one; the
/// rest are then reported as errors rather than turning the column into text.
const TIMESTAMP_MAJORITY: f64 = 0.9;

fn looks_padded(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.")
}

fn parse_bool(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn parse_int(text: &str) -> Option<i64> {
    if looks_padded(text) {
        None
    } else {
        text.parse().ok()
    }
}

fn parse_float(text: &str) -> Option<f64> {
    if looks_padded(text)
        || text.eq_ignore_ascii_case("inf")
        || text.eq_ignore_ascii_case("infinity")
    {
        None
    } else {
        text.parse().ok()
    }
}

/// The type of a column of text: the narrowest type every value reads as. A column whose
/// values are mostly timestamps is a timestamp column even if some fail to parse, so that
/// converting it reports them.
pub fn infer_dtype(values: &StringArray) -> DType {
    let (mut as_bool, mut as_int, mut as_float) = (true, true, true);
    let (mut seen, mut stamps) = (0usize, 0usize);
    for text in values.iter().flatten() {
        seen += 1;
        as_bool = as_bool && parse_bool(text).is_some();
        as_int = as_int && parse_int(text).is_some();
        as_float = as_float && parse_float(text).is_some();
        if parse_timestamp(text).is_some() {
            stamps += 1;
        } else if !(as_bool || as_int || as_float) && seen >= 1000 && stamps * 2 < seen {
            return DType::String;
        }
    }
    if seen == 0 {
        DType::String
    } else if as_bool {
        DType::Bool
    } else if as_int {
        DType::Int64
    } else if as_float {
        DType::Float64
    } else if stamps as f64 >= TIMESTAMP_MAJORITY * seen as f64 {
        DType::Timestamp
    } else {
        DType::String
    }
}

/// What text a value must look like to be read as `dtype`, for error messages.
pub fn expected_text(dtype: DType) -> &'static str {
    match dtype {
        DType::Bool => "a bool (true or false)",
        DType::Int64 => "an integer",
        DType::Float64 => "a number",
        DType::String => "text",
        DType::Timestamp => "a timestamp (YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS][Z|+HH:MM])",
    }
}

/// Converts text to `dtype`; on failure, the row and text of the first bad value.
pub fn convert(values: &StringArray, dtype: DType) -> Result<ArrayRef, (usize, String)> {
    fn parse_all<T, A: FromIterator<Option<T>> + Array + 'static>(
        values: &StringArray,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<ArrayRef, (usize, String)> {
        let mut bad = None;
        let array: A = values
            .iter()
            .enumerate()
            .map(|(row, v)| {
                let text = v?;
                let parsed = parse(text);
                if parsed.is_none() && bad.is_none() {
                    bad = Some((row, text.to_string()));
                }
                parsed
            })
            .collect();
        match bad {
            Some(b) => Err(b),
            None => Ok(Arc::new(array)),
        }
    }
    match dtype {
        DType::String => Ok(Arc::new(values.clone())),
        DType::Bool => parse_all::<_, BooleanArray>(values, parse_bool),
        DType::Int64 => parse_all::<_, Int64Array>(values, |t| t.parse().ok()),
        DType::Float64 => parse_all::<_, Float64Array>(values, |t| t.parse().ok()),
        DType::Timestamp => parse_all::<_, TimestampSecondArray>(values, parse_timestamp),
    }
}

/// The relgraph type of an array already converted to its storage type.
pub fn dtype_of(array: &dyn Array) -> Option<DType> {
    use arrow::datatypes::DataType as D;
    match array.data_type() {
        D::Boolean => Some(DType::Bool),
        D::Int64 => Some(DType::Int64),
        D::Float64 => Some(DType::Float64),
        D::Utf8 => Some(DType::String),
        D::Timestamp(arrow::datatypes::TimeUnit::Second, None) => Some(DType::Timestamp),
        _ => None,
    }
}

/// The distinct non-null values of a key-typed column, for uniqueness and containment.
#[derive(Debug)]
pub enum KeySet<'a> {
    Int(FxHashSet<i64>),
    Str(FxHashSet<&'a str>),
}

/// The values of a key-typed column (int64 or string).
#[derive(Clone, Copy, Debug)]
pub enum KeyValues<'a> {
    Int(&'a Int64Array),
    Str(&'a StringArray),
}

impl<'a> KeyValues<'a> {
    pub fn of(array: &'a dyn Array) -> Option<Self> {
        let any = array.as_any();
        any.downcast_ref::<Int64Array>()
            .map(KeyValues::Int)
            .or_else(|| any.downcast_ref::<StringArray>().map(KeyValues::Str))
    }

    pub fn set(&self) -> KeySet<'a> {
        fn collect<T: std::hash::Hash + Eq>(
            values: impl Iterator<Item = Option<T>>,
            len: usize,
        ) -> FxHashSet<T> {
            let mut set = FxHashSet::with_capacity_and_hasher(len, Default::default());
            set.extend(values.flatten());
            set
        }
        match *self {
            KeyValues::Int(a) => KeySet::Int(collect(a.iter(), a.len() - a.null_count())),
            KeyValues::Str(a) => KeySet::Str(collect(a.iter(), a.len() - a.null_count())),
        }
    }

    /// The first row whose value repeats an earlier one: (earlier row, row, value).
    pub fn first_duplicate(&self) -> Option<(usize, usize, String)> {
        fn scan<T: std::hash::Hash + Eq + ToString>(
            values: impl ExactSizeIterator<Item = Option<T>>,
        ) -> Option<(usize, usize, String)> {
            let mut seen = FxHashMap::with_capacity_and_hasher(values.len(), Default::default());
            for (row, v) in values.enumerate() {
                let Some(v) = v else { continue };
                if let Some(&first) = seen.get(&v) {
                    return Some((first, row, v.to_string()));
                }
                seen.insert(v, row);
            }
            None
        }
        match *self {
            KeyValues::Int(a) => scan(a.iter()),
            KeyValues::Str(a) => scan(a.iter()),
        }
    }

    /// Rows with a value, rows whose value is in `keys`, and the same over distinct values.
    pub fn containment(&self, keys: &KeySet<'_>) -> Containment {
        self.counts().containment(keys)
    }

    /// Each distinct non-null value with its number of rows: counted once per column,
    /// then checked against any number of key sets.
    pub fn counts(&self) -> KeyCounts<'a> {
        fn count<T: std::hash::Hash + Eq>(
            values: impl Iterator<Item = Option<T>>,
        ) -> FxHashMap<T, u64> {
            let mut counts = FxHashMap::default();
            for v in values.flatten() {
                *counts.entry(v).or_insert(0) += 1;
            }
            counts
        }
        match *self {
            KeyValues::Int(a) => KeyCounts::Int(count(a.iter())),
            KeyValues::Str(a) => KeyCounts::Str(count(a.iter())),
        }
    }
}

/// The distinct non-null values of a key-typed column and how many rows hold each.
#[derive(Debug)]
pub enum KeyCounts<'a> {
    Int(FxHashMap<i64, u64>),
    Str(FxHashMap<&'a str, u64>),
}

impl KeyCounts<'_> {
    /// Rows with a value, rows whose value is in `keys`, and the same over distinct values.
    pub fn containment(&self, keys: &KeySet<'_>) -> Containment {
        let mut c = Containment::default();
        let mut add = |found: bool, rows: u64| {
            c.rows += rows;
            c.distinct += 1;
            if found {
                c.rows_found += rows;
                c.distinct_found += 1;
            }
        };
        match (self, keys) {
            (KeyCounts::Int(counts), KeySet::Int(k)) => {
                for (v, &n) in counts {
                    add(k.contains(v), n);
                }
            }
            (KeyCounts::Str(counts), KeySet::Str(k)) => {
                for (v, &n) in counts {
                    add(k.contains(v), n);
                }
            }
            _ => {}
        }
        c
    }
}

impl KeySet<'_> {
    pub fn len(&self) -> usize {
        match self {
            KeySet::Int(s) => s.len(),
            KeySet::Str(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Containment {
    pub rows: u64,
    pub rows_found: u64,
    pub distinct: u64,
    pub distinct_found: u64,
}

impl Containment {
    pub fn dangling(&self) -> u64 {
        self.rows - self.rows_found
    }

    fn share(found: u64, all: u64) -> f64 {
        if all == 0 {
            0.0
        } else {
            found as f64 / all as f64
        }
    }

    pub fn row_share(&self) -> f64 {
        Self::share(self.rows_found, self.rows)
    }

    pub fn distinct_share(&self) -> f64 {
        Self::share(self.distinct_found, self.distinct)
    }
}

/// Lower-case singular of a table name: `customers` → `customer`, `categories` → `category`.
pub fn singular(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix("ies") {
        format!("{stem}y")
    } else if lower.ends_with("sses") || lower.ends_with("xes") {
        lower[..lower.len() - 2].to_string()
    } else if lower.ends_with('s') && !lower.ends_with("ss") {
        lower[..lower.len() - 1].to_string()
    } else {
        lower
    }
}

/// The score of a name that says "the key of this very table" (`id`, `order_id` in `orders`).
pub const OWN_KEY_NAME: u32 = 3;

/// How strongly a column's name says it is its own table's key (0: not at all).
pub fn key_name_score(table: &str, column: &str) -> u32 {
    let c = column.to_ascii_lowercase();
    let t = singular(table);
    if c == "id" || c == format!("{t}_id") || c == format!("{}_id", table.to_ascii_lowercase()) {
        OWN_KEY_NAME
    } else if c.ends_with("_id") || c.ends_with("id") || c.ends_with("_key") || c.ends_with("_code")
    {
        2
    } else {
        0
    }
}

/// How strongly a column's name says it points at `table` whose key is `key` (0: no sign).
pub fn reference_name_score(column: &str, table: &str, key: &str) -> u32 {
    let c = column.to_ascii_lowercase();
    let k = key.to_ascii_lowercase();
    let t = singular(table);
    let tl = table.to_ascii_lowercase();
    if (c == k && k != "id") || c == format!("{t}_id") || c == format!("{tl}_id") {
        3
    } else if c.ends_with(&format!("_{k}")) || c == t || c.ends_with(&format!("_{t}_id")) {
        2
    } else if c.contains(&t) {
        1
    } else {
        0
    }
}

/// Names that say "this is when the row happened", best first.
const TIME_NAMES: [&str; 9] = [
    "timestamp",
    "time",
    "event_time",
    "datetime",
    "created_at",
    "date",
    "ts",
    "time_hour",
    "created",
];

/// The time column among the timestamp columns `names`: a well-known name first, then a
/// name containing `time`, `date` or ending in `_at`, then the first.
pub fn pick_time_column<'a>(names: &[&'a str]) -> Option<&'a str> {
    let lower = |n: &str| n.to_ascii_lowercase();
    TIME_NAMES
        .iter()
        .find_map(|want| names.iter().find(|n| lower(n) == *want))
        .or_else(|| {
            names.iter().find(|n| {
                let l = lower(n);
                l.contains("time") || l.contains("date") || l.ends_with("_at")
            })
        })
        .or_else(|| names.first())
        .copied()
}

/// What the semantic type of a column depends on, measured once.
#[derive(Debug, Default)]
pub struct TextProfile {
    pub values: usize,
    pub distinct: usize,
    pub mean_words: f64,
    /// Values that hold a `|` or `;` separated list, and the distinct items over them.
    pub listed: usize,
    pub list_items: usize,
    pub max_item_words: usize,
}

impl TextProfile {
    pub fn of(values: &StringArray) -> Self {
        let mut distinct = FxHashSet::default();
        let mut items = FxHashSet::default();
        let (mut n, mut words, mut listed, mut max_item_words) = (0usize, 0usize, 0usize, 0usize);
        for text in values.iter().flatten() {
            n += 1;
            words += text.split_whitespace().count();
            distinct.insert(text);
            if text.contains(['|', ';']) {
                listed += 1;
                for item in text.split(['|', ';']) {
                    let item = item.trim();
                    max_item_words = max_item_words.max(item.split_whitespace().count());
                    items.insert(item);
                }
            }
        }
        TextProfile {
            values: n,
            distinct: distinct.len(),
            mean_words: if n == 0 { 0.0 } else { words as f64 / n as f64 },
            listed,
            list_items: items.len(),
            max_item_words,
        }
    }

    /// Semantic type of a text column that is not a key.
    pub fn stype(&self) -> SType {
        let n = self.values;
        let category_limit = (n / 10).clamp(20, 1000);
        if self.listed * 10 >= n.max(1)
            && self.max_item_words <= 3
            && self.list_items <= category_limit.max(50)
        {
            SType::Multicategorical
        } else if self.distinct <= category_limit && self.distinct < n {
            SType::Categorical
        } else if self.mean_words >= 2.0 {
            SType::Text
        } else if self.distinct * 2 > n {
            SType::Id
        } else {
            SType::Categorical
        }
    }
}

/// Semantic type of a column that is not a key.
pub fn infer_stype(array: &dyn Array) -> SType {
    let any = array.as_any();
    if let Some(text) = any.downcast_ref::<StringArray>() {
        return TextProfile::of(text).stype();
    }
    if let Some(ints) = any.downcast_ref::<Int64Array>() {
        let flag = ints.iter().flatten().all(|v| v == 0 || v == 1);
        return if flag {
            SType::Categorical
        } else {
            SType::Numerical
        };
    }
    match dtype_of(array) {
        Some(DType::Bool) => SType::Categorical,
        Some(DType::Timestamp) => SType::Timestamp,
        _ => SType::Numerical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(values: &[Option<&str>]) -> StringArray {
        values.iter().copied().collect()
    }

    #[test]
    fn containment_counts_rows_and_distinct_values_found() {
        let keys = Int64Array::from(vec![1, 2, 3]);
        let keys = KeyValues::Int(&keys).set();
        let refs = Int64Array::from(vec![Some(1), Some(1), None, Some(4), Some(2), Some(4)]);
        let expected = Containment {
            rows: 5,
            rows_found: 3,
            distinct: 3,
            distinct_found: 2,
        };
        assert_eq!(KeyValues::Int(&refs).containment(&keys), expected);
        let keys = text(&[Some("a"), Some("b")]);
        let keys = KeyValues::Str(&keys).set();
        let refs = text(&[Some("a"), Some("c"), Some("c"), None]);
        let m = KeyValues::Str(&refs).containment(&keys);
        assert_eq!(
            (m.rows, m.rows_found, m.distinct, m.distinct_found),
            (3, 1, 2, 1)
        );
        assert_eq!(m.dangling(), 2);
    }

    #[test]
    fn dtype_is_the_narrowest_that_reads_every_value() {
        let cases: [(&[Option<&str>], DType); 8] = [
            (&[Some("true"), None, Some("FALSE")], DType::Bool),
            (&[Some("1"), Some("-20"), None], DType::Int64),
            (&[Some("1"), Some("2.5"), Some("-3e2")], DType::Float64),
            (
                &[Some("2024-01-01"), Some("2024-01-02 10:00:00")],
                DType::Timestamp,
            ),
            (&[Some("007"), Some("12")], DType::String),
            (&[Some("1"), Some("x")], DType::String),
            (&[None, None], DType::String),
            (&[Some("inf"), Some("1")], DType::String),
        ];
        for (values, want) in cases {
            assert_eq!(infer_dtype(&text(values)), want, "{values:?}");
        }
    }

    #[test]
    fn mostly_timestamps_is_a_timestamp_column_with_a_reported_bad_value() {
        let mut values: Vec<Option<&str>> = vec![Some("2024-01-05"); 19];
        values.insert(7, Some("2024-13-45"));
        let column = text(&values);
        assert_eq!(infer_dtype(&column), DType::Timestamp);
        assert_eq!(
            convert(&column, DType::Timestamp).err(),
            Some((7, "2024-13-45".to_string()))
        );
    }

    #[test]
    fn text_semantics() {
        let many = |f: &dyn Fn(usize) -> String, n: usize| -> StringArray {
            (0..n).map(|i| Some(f(i))).collect()
        };
        let cat = many(
            &|i| ["budget", "regular", "premium"][i % 3].to_string(),
            300,
        );
        assert_eq!(TextProfile::of(&cat).stype(), SType::Categorical);
        let multi = many(
            &|i| ["photo|travel", "audio", "mobile;fitness"][i % 3].to_string(),
            300,
        );
        assert_eq!(TextProfile::of(&multi).stype(), SType::Multicategorical);
        let prose = many(&|i| format!("Lumen Pro Camera X{i}"), 300);
        assert_eq!(TextProfile::of(&prose).stype(), SType::Text);
        let codes = many(&|i| format!("N{i}XY"), 300);
        assert_eq!(TextProfile::of(&codes).stype(), SType::Id);
    }

    #[test]
    fn names() {
        assert_eq!(singular("customers"), "customer");
        assert_eq!(singular("categories"), "category");
        assert_eq!(singular("boxes"), "box");
        assert_eq!(singular("loyalty"), "loyalty");
        assert_eq!(singular("address"), "address");
        assert_eq!(
            reference_name_score("customer_id", "customers", "customer_id"),
            3
        );
        assert_eq!(reference_name_score("user_id", "users", "id"), 3);
        assert_eq!(reference_name_score("origin", "airports", "faa"), 0);
        assert_eq!(key_name_score("orders", "order_id"), 3);
        assert_eq!(key_name_score("airports", "faa"), 0);
        assert_eq!(
            pick_time_column(&["signup_date", "timestamp"]),
            Some("timestamp")
        );
        assert_eq!(
            pick_time_column(&["born", "joined_date"]),
            Some("joined_date")
        );
    }
}
