//! PQL errors: one line saying what is wrong, where (line:column), a caret under the text,
//! and where possible what to write instead.

use std::fmt;

/// A byte range of the query text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PqlError {
    pub span: Span,
    pub message: String,
    pub hint: Option<String>,
}

impl PqlError {
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        PqlError {
            span,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The error against its query: `line:col: message; hint`, the line, a caret line.
    pub fn render(&self, query: &str) -> String {
        let start = self.span.start.min(query.len());
        let line_start = query[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = query[start..].find('\n').map_or(query.len(), |i| start + i);
        let line_no = query[..start].matches('\n').count() + 1;
        let col = query[line_start..start].chars().count() + 1;
        let line = &query[line_start..line_end];
        let width = query[start..self.span.end.clamp(start, line_end)]
            .chars()
            .count()
            .max(1);
        let mut head = format!("{line_no}:{col}: {}", self.message);
        if let Some(h) = &self.hint {
            head.push_str("; ");
            head.push_str(h);
        }
        format!(
            "{head}\n  {line}\n  {}{}",
            " ".repeat(col - 1),
            "^".repeat(width)
        )
    }
}

impl fmt::Display for PqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PqlError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_column_and_caret() {
        let q = "PREDICT COUNT(orders.*, 0, 30)\nFOR EACH custmers.id";
        let e = PqlError::new(Span::new(40, 48), "no table `custmers`")
            .with_hint("did you mean `customers`?");
        assert_eq!(
            e.render(q),
            "2:10: no table `custmers`; did you mean `customers`?\n  FOR EACH custmers.id\n           ^^^^^^^^"
        );
        let end = PqlError::new(Span::new(q.len(), q.len()), "unexpected end");
        assert!(end.render(q).ends_with("^"));
    }
}
