//! Beijing time, as JST writes it (`yyyy-MM-dd HH:mm:ss`).
//!
//! China has kept UTC+8 without daylight saving since 1991, so a fixed offset is exact for every
//! date this tool handles and spares a time-zone database.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Utc};

/// UTC+8.
pub fn beijing() -> FixedOffset {
    // 8 hours is always a valid offset; the fallback can never be taken.
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| Utc.fix())
}

use chrono::Offset;

/// Now, in Beijing time.
pub fn now_beijing() -> DateTime<FixedOffset> {
    Utc::now().with_timezone(&beijing())
}

/// Formats as `yyyy-MM-dd HH:mm:ss` in Beijing time.
pub fn format_beijing(t: &DateTime<FixedOffset>) -> String {
    t.with_timezone(&beijing())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Reads `yyyy-MM-dd HH:mm:ss` (Beijing; odd spacing, `T` and a missing time tolerated) or
/// RFC 3339 with an offset.
pub fn parse_beijing(text: &str) -> Option<DateTime<FixedOffset>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t);
    }
    let normalised = normalise(text);
    let naive = NaiveDateTime::parse_from_str(&normalised, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(&normalised, "%Y-%m-%d %H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(&normalised, "%Y-%m-%d %H:%M"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(&normalised, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })?;
    naive.and_local_timezone(beijing()).single()
}

/// Collapses runs of spaces, turns `T` and `/` into JST's separators.
fn normalise(text: &str) -> String {
    let replaced = text.replace('T', " ").replace('/', "-");
    replaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The date part (`yyyy-MM-dd`) of a JST date-time, when it can be read.
pub fn date_part(text: &str) -> Option<String> {
    parse_beijing(text).map(|t| t.format("%Y-%m-%d").to_string())
}

/// A count document's count date (`yyyy-MM-dd`): the date of its `io_date`, or else of its
/// `modified`. The mapping dates bills with it; reconciliation selects documents by it.
pub fn count_date(io_date: &str, modified: &str) -> Option<String> {
    date_part(io_date).or_else(|| date_part(modified))
}

/// RFC 3339, for our own headers.
pub fn rfc3339_now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jst_dates_with_odd_spacing() {
        let a = parse_beijing("2026-03-01 08:00:00").expect("plain");
        let b = parse_beijing(" 2026-03-01   08:00:00 ").expect("spaces");
        let c = parse_beijing("2026-03-01T08:00:00").expect("T");
        let d = parse_beijing("2026-03-01T00:00:00Z").expect("rfc3339");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, d);
        assert_eq!(format_beijing(&d), "2026-03-01 08:00:00");
        assert_eq!(date_part("2026/3/1 8:00:00").as_deref(), Some("2026-03-01"));
        assert!(parse_beijing("").is_none());
        assert!(parse_beijing("yesterday").is_none());
    }
}
