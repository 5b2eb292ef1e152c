//! Time: instants are whole seconds since the Unix epoch, UTC (`i64`).
//!
//! Parsing accepts what relational exports write: `2026-03-01`, `2026-03-01 10:22`,
//! `2026-03-01 10:22:00`, `2026-03-01T10:22:00.123Z`, `2026-03-01T10:22:00+02:00`, and the
//! same with `/` between the date parts. Fractions of a second are truncated; offsets are
//! applied so the result is UTC. A bare number is never a timestamp (years, epochs and
//! counts look alike).

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian calendar).
pub const fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = month as i64;
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

/// A cursor over the bytes of a timestamp being parsed.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let end = self.pos.checked_add(n)?;
        let chunk = self.bytes.get(self.pos..end)?;
        let mut value = 0u32;
        for &b in chunk {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(b - b'0');
        }
        self.pos = end;
        Some(value)
    }

    fn eat(&mut self, expected: &[u8]) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        if expected.contains(&b) {
            self.pos += 1;
            Some(b)
        } else {
            None
        }
    }

    fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

/// Parses a timestamp into seconds since the epoch (UTC); `None` if `text` is not one.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let mut c = Cursor {
        bytes: text.trim().as_bytes(),
        pos: 0,
    };
    let year = c.digits(4)?;
    let sep = c.eat(b"-/")?;
    let month = c.digits(2)?;
    c.eat(&[sep])?;
    let day = c.digits(2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month) {
        return None;
    }
    let mut seconds = days_from_civil(i64::from(year), month, day) * DAY;
    if c.done() {
        return Some(seconds);
    }
    c.eat(b"T ")?;
    let hour = c.digits(2)?;
    c.eat(b":")?;
    let minute = c.digits(2)?;
    let second = if c.eat(b":").is_some() {
        c.digits(2)?
    } else {
        0
    };
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    seconds += i64::from(hour * 3600 + minute * 60 + second);
    if c.eat(b".").is_some() {
        let start = c.pos;
        while c.bytes.get(c.pos).is_some_and(u8::is_ascii_digit) {
            c.pos += 1;
        }
        if c.pos == start {
            return None;
        }
    }
    if c.done() || (c.eat(b"Z").is_some() && c.done()) {
        return Some(seconds);
    }
    let sign = match c.eat(b"+-")? {
        b'+' => 1,
        _ => -1,
    };
    let off_hour = c.digits(2)?;
    let off_minute = if c.done() {
        0
    } else {
        c.eat(b":");
        c.digits(2)?
    };
    if !c.done() || off_hour > 23 || off_minute > 59 {
        return None;
    }
    Some(seconds - sign * i64::from(off_hour * 3600 + off_minute * 60))
}

fn push_two(out: &mut Vec<u8>, value: u32) {
    out.push(b'0' + (value / 10) as u8);
    out.push(b'0' + (value % 10) as u8);
}

/// Appends the date of `seconds` as `YYYY-MM-DD`.
pub fn write_date(seconds: i64, out: &mut Vec<u8>) {
    let (year, month, day) = civil_from_days(seconds.div_euclid(DAY));
    if (0..10_000).contains(&year) {
        let y = year as u32;
        push_two(out, y / 100);
        push_two(out, y % 100);
    } else {
        out.extend_from_slice(year.to_string().as_bytes());
    }
    out.push(b'-');
    push_two(out, month);
    out.push(b'-');
    push_two(out, day);
}

/// Appends `seconds` as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn write_timestamp(seconds: i64, out: &mut Vec<u8>) {
    write_date(seconds, out);
    let in_day = seconds.rem_euclid(DAY) as u32;
    out.push(b' ');
    push_two(out, in_day / 3600);
    out.push(b':');
    push_two(out, in_day / 60 % 60);
    out.push(b':');
    push_two(out, in_day % 60);
}

/// `seconds` as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn format_timestamp(seconds: i64) -> String {
    let mut out = Vec::with_capacity(19);
    write_timestamp(seconds, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_accepted_forms() {
        let t = 1_772_360_520; // 2026-03-01 10:22:00 UTC
        assert_eq!(parse_timestamp("2026-03-01"), Some(t - 10 * 3600 - 22 * 60));
        assert_eq!(parse_timestamp("2026-03-01 10:22"), Some(t));
        assert_eq!(parse_timestamp("2026-03-01 10:22:00"), Some(t));
        assert_eq!(parse_timestamp("2026/03/01T10:22:00.123Z"), Some(t));
        assert_eq!(parse_timestamp("2026-03-01T12:22:00+02:00"), Some(t));
        assert_eq!(parse_timestamp("2026-03-01T05:22:00-0500"), Some(t));
        assert_eq!(
            parse_timestamp(" 2013-01-01T10:00:00Z "),
            Some(1_357_034_400)
        );
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for bad in [
            "",
            "2013",
            "20130101",
            "2026-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-01-32",
            "2024-01-01 24:00",
            "2024-01-01 10:60",
            "2024-01-01x",
            "2024-01/01",
            "2024-01-01T",
            "2024-01-01 10:00:00.",
            "2024-01-01 10:00 +25:00",
            "१२३४-01-01",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
        assert!(parse_timestamp("2024-02-29").is_some());
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(seconds in -62_000_000_000i64..250_000_000_000) {
            let text = format_timestamp(seconds);
            prop_assert_eq!(parse_timestamp(&text), Some(seconds), "{}", text);
        }

        #[test]
        fn civil_round_trips(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn parser_never_panics(text in "\\PC{0,40}") {
            let _ = parse_timestamp(&text);
        }
    }
}
