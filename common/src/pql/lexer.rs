//! Tokens of PQL, each with its byte span in the query text.

use super::error::{PqlError, Span};
use crate::time::parse_timestamp;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A word: keyword or name (keywords are recognised by the parser, case-insensitively).
    Word(String),
    Int(i64),
    Float(f64),
    Str(String),
    /// An unquoted date or date-time, as seconds since the epoch.
    Time(i64),
    Dot,
    Comma,
    LParen,
    RParen,
    Star,
    Plus,
    Minus,
    Slash,
    Arrow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Int(i) => format!("`{i}`"),
            Tok::Float(f) => format!("`{f}`"),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Time(_) => "a date".to_string(),
            Tok::Eof => "the end of the query".to_string(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::Dot => ".",
            Tok::Comma => ",",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::Star => "*",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Slash => "/",
            Tok::Arrow => "->",
            Tok::Eq => "=",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            _ => "",
        }
    }
}

struct Lexer<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

/// Splits a query into tokens; comments (`#`, `--`) and whitespace are dropped.
pub fn tokenize(text: &str) -> Result<Vec<Token>, PqlError> {
    let mut lx = Lexer {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        lx.skip_space_and_comments();
        let start = lx.pos;
        let Some(&b) = lx.bytes.get(start) else {
            out.push(Token {
                tok: Tok::Eof,
                span: Span::new(start, start),
            });
            return Ok(out);
        };
        let tok = match b {
            b'0'..=b'9' => lx.number_or_time()?,
            b'\'' | b'"' => lx.string(b)?,
            b if b.is_ascii_alphabetic() || b == b'_' => lx.word(),
            b'`' => lx.quoted_name()?,
            _ => lx.symbol()?,
        };
        out.push(Token {
            tok,
            span: Span::new(start, lx.pos),
        });
    }
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    fn skip_space_and_comments(&mut self) {
        loop {
            match self.peek(0) {
                Some(b) if b.is_ascii_whitespace() => self.pos += 1,
                Some(b'#') => self.skip_line(),
                Some(b'-') if self.peek(1) == Some(b'-') => self.skip_line(),
                _ => return,
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(b) = self.peek(0) {
            self.pos += 1;
            if b == b'\n' {
                return;
            }
        }
    }

    fn word(&mut self) -> Tok {
        let start = self.pos;
        while self
            .peek(0)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.pos += 1;
        }
        Tok::Word(self.text[start..self.pos].to_string())
    }

    fn quoted_name(&mut self) -> Result<Tok, PqlError> {
        let start = self.pos;
        self.pos += 1;
        let close = self.text[self.pos..].find('`').ok_or_else(|| {
            PqlError::new(
                Span::new(start, self.text.len()),
                "unterminated `quoted name`",
            )
        })?;
        let name = self.text[self.pos..self.pos + close].to_string();
        self.pos += close + 1;
        Ok(Tok::Word(name))
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek(0).is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `12`, `1.5`, `2e3`, `2026-03-01`, `2026-03-01 10:22:00`.
    fn number_or_time(&mut self) -> Result<Tok, PqlError> {
        let start = self.pos;
        if let Some(t) = self.time() {
            return Ok(t);
        }
        self.digits();
        let mut float = false;
        if self.peek(0) == Some(b'.') && self.peek(1).is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
            self.digits();
            float = true;
        }
        if matches!(self.peek(0), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.peek(1), Some(b'+' | b'-')));
            if self.peek(1 + sign).is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1 + sign;
                self.digits();
                float = true;
            }
        }
        if self
            .peek(0)
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        {
            self.word();
            let text = &self.text[start..self.pos];
            return Err(PqlError::new(
                Span::new(start, self.pos),
                format!("`{text}` is not a number"),
            ));
        }
        let text = &self.text[start..self.pos];
        let span = Span::new(start, self.pos);
        if float {
            text.parse()
                .map(Tok::Float)
                .map_err(|_| PqlError::new(span, format!("`{text}` is not a number")))
        } else {
            text.parse().map(Tok::Int).map_err(|_| {
                PqlError::new(span, format!("`{text}` does not fit in a 64-bit integer"))
            })
        }
    }

    /// An unquoted date (and time), if one starts here.
    fn time(&mut self) -> Option<Tok> {
        let rest = &self.text[self.pos..];
        let date_len = 10;
        let date = rest.get(..date_len)?;
        let shape = date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
        if !shape {
            return None;
        }
        let with_time = rest.get(..19).filter(|s| {
            let b = s.as_bytes();
            (b[10] == b' ' || b[10] == b'T') && b[13] == b':' && b[16] == b':'
        });
        let (text, len) = match with_time.and_then(|s| parse_timestamp(s).map(|t| (t, 19))) {
            Some(found) => found,
            None => (parse_timestamp(date)?, date_len),
        };
        self.pos += len;
        Some(Tok::Time(text))
    }

    fn string(&mut self, quote: u8) -> Result<Tok, PqlError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.text[self.pos..].chars().next() else {
                return Err(
                    PqlError::new(Span::new(start, self.pos), "unterminated string")
                        .with_hint(format!("close it with {}", quote as char)),
                );
            };
            self.pos += c.len_utf8();
            match c {
                c if c as u32 == u32::from(quote) => {
                    if self.peek(0) == Some(quote) {
                        self.pos += 1;
                        out.push(c);
                    } else {
                        return Ok(Tok::Str(out));
                    }
                }
                '\\' => out.push(self.escape(start)?),
                c => out.push(c),
            }
        }
    }

    fn escape(&mut self, start: usize) -> Result<char, PqlError> {
        let at = self.pos;
        let c = self.text[at..]
            .chars()
            .next()
            .ok_or_else(|| PqlError::new(Span::new(start, at), "unterminated string"))?;
        self.pos += c.len_utf8();
        Ok(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            '0' => '\0',
            '\\' | '\'' | '"' => c,
            other => {
                return Err(PqlError::new(
                    Span::new(at - 1, self.pos),
                    format!("unknown escape `\\{other}` in a string"),
                )
                .with_hint("use \\\\, \\', \\\", \\n, \\t, \\r or \\0".to_string()));
            }
        })
    }

    fn symbol(&mut self) -> Result<Tok, PqlError> {
        let two = (self.peek(0), self.peek(1));
        let (tok, len) = match two {
            (Some(b'-'), Some(b'>')) => (Tok::Arrow, 2),
            (Some(b'!'), Some(b'=')) => (Tok::Ne, 2),
            (Some(b'<'), Some(b'>')) => (Tok::Ne, 2),
            (Some(b'<'), Some(b'=')) => (Tok::Le, 2),
            (Some(b'>'), Some(b'=')) => (Tok::Ge, 2),
            (Some(b'='), Some(b'=')) => (Tok::Eq, 2),
            (Some(b'.'), _) => (Tok::Dot, 1),
            (Some(b','), _) => (Tok::Comma, 1),
            (Some(b'('), _) => (Tok::LParen, 1),
            (Some(b')'), _) => (Tok::RParen, 1),
            (Some(b'*'), _) => (Tok::Star, 1),
            (Some(b'+'), _) => (Tok::Plus, 1),
            (Some(b'-'), _) => (Tok::Minus, 1),
            (Some(b'/'), _) => (Tok::Slash, 1),
            (Some(b'='), _) => (Tok::Eq, 1),
            (Some(b'<'), _) => (Tok::Lt, 1),
            (Some(b'>'), _) => (Tok::Gt, 1),
            _ => {
                let c = self.text[self.pos..].chars().next().unwrap_or(' ');
                let span = Span::new(self.pos, self.pos + c.len_utf8());
                return Err(PqlError::new(span, format!("unexpected character `{c}`")));
            }
        };
        self.pos += len;
        Ok(tok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Tok> {
        tokenize(text)
            .expect("tokens")
            .into_iter()
            .map(|t| t.tok)
            .collect()
    }

    #[test]
    fn tokens_of_a_query() {
        use Tok::*;
        assert_eq!(
            toks("COUNT(orders.*, -30, 0) >= 1.5e1 -- note\n AND x.y != 'it''s' # end"),
            vec![
                Word("COUNT".into()),
                LParen,
                Word("orders".into()),
                Dot,
                Star,
                Comma,
                Minus,
                Int(30),
                Comma,
                Int(0),
                RParen,
                Ge,
                Float(15.0),
                Word("AND".into()),
                Word("x".into()),
                Dot,
                Word("y".into()),
                Ne,
                Str("it's".into()),
                Eof
            ]
        );
        assert_eq!(toks("2026-03-01 10:22:00"), vec![Time(1_772_360_520), Eof]);
        assert_eq!(
            toks("2026-03-01 x"),
            vec![Time(1_772_323_200), Word("x".into()), Eof]
        );
        assert_eq!(
            toks("a->b"),
            vec![Word("a".into()), Arrow, Word("b".into()), Eof]
        );
        assert_eq!(
            toks(r#""say \"hi\"\n""#),
            vec![Str("say \"hi\"\n".into()), Eof]
        );
    }

    #[test]
    fn lexical_errors_point_at_the_text() {
        let err = tokenize("x = 'open").expect_err("unterminated");
        assert_eq!(
            (err.span.start, err.message.as_str()),
            (4, "unterminated string")
        );
        let err = tokenize("a ; b").expect_err("bad char");
        assert_eq!(err.span, Span::new(2, 3));
        let err = tokenize("99999999999999999999").expect_err("too big");
        assert!(err.message.contains("64-bit"));
    }
}
