//! ExecuteBillQuery and View: the fields the simulator can answer and the filters it reads.

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// The quantities a bill takes out, by `"{stock}:{material}"`.
pub(super) fn outbound(model: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let number = |v: Option<&Value>| {
        v.and_then(Value::as_object)
            .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("FNumber")))
            .and_then(|(_, n)| n.as_str())
            .unwrap_or_default()
            .to_string()
    };
    for e in model
        .get("FEntity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = format!(
            "{}:{}",
            number(e.get("FStockId")),
            number(e.get("FMaterialId"))
        );
        *out.entry(key).or_default() += common::messages::num_field(e.get("FQty")).unwrap_or(0.0);
    }
    out
}

/// Header fields ExecuteBillQuery answers.
pub(super) const HEADER_KEYS: &[&str] = &["FID", "FBillNo", "FDocumentStatus", "FDate"];
/// Entry fields ExecuteBillQuery answers (one row per entry).
pub(super) const ENTRY_KEYS: &[&str] = &[
    "FMaterialId.FNumber",
    "FStockId.FNumber",
    "FLot.FNumber",
    "FQty",
    "FEntryNote",
];

/// One column of a query row.
pub(super) fn field(bill: &SavedBill, entry: Option<&Value>, key: &str) -> Value {
    let number = |v: Option<&Value>| {
        v.and_then(|r| r.as_object())
            .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("FNumber")))
            .map_or(Value::Null, |(_, n)| n.clone())
    };
    let of_entry = |name: &str| {
        entry
            .and_then(|e| e.as_object())
            .and_then(|e| find(e, name))
    };
    match key.to_ascii_lowercase().as_str() {
        "fid" => json!(bill.id),
        "fbillno" => json!(bill.bill_no),
        "fdocumentstatus" => json!(bill.status),
        "fdate" => bill.model.get("FDate").cloned().unwrap_or(Value::Null),
        "fmaterialid.fnumber" => number(of_entry("FMaterialId")),
        "fstockid.fnumber" => number(of_entry("FStockId")),
        "flot.fnumber" => number(of_entry("FLot")),
        "fqty" => of_entry("FQty").cloned().unwrap_or(Value::Null),
        _ => of_entry("FEntryNote").cloned().unwrap_or(Value::Null),
    }
}

/// The numbers of a FilterString `{field}='X'` or `{field} in ('A','B')` (case-insensitive
/// field name), as base-data and bill queries are written.
pub(super) fn numbers_of(field: &str, text: &str) -> Option<BTreeSet<String>> {
    let text = text.trim();
    if !text.to_ascii_lowercase().starts_with(field) {
        return None;
    }
    let original = text[field.len()..].trim();
    let list = if let Some(v) = original.strip_prefix('=') {
        v.trim()
    } else if original.to_ascii_lowercase().starts_with("in") {
        original[2..].trim().strip_prefix('(')?.strip_suffix(')')?
    } else {
        return None;
    };
    // 'A','B''s','C,D': quoted literals separated by commas, a quote doubled inside one.
    let mut numbers = BTreeSet::new();
    let mut chars = list.trim().chars().peekable();
    loop {
        if chars.next()? != '\'' {
            return None;
        }
        let mut number = String::new();
        loop {
            match chars.next()? {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    number.push('\'');
                }
                '\'' => break,
                c => number.push(c),
            }
        }
        numbers.insert(number);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(numbers),
            Some(',') => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some(_) => return None,
        }
    }
}

/// The FilterString forms the simulator understands, alone or joined by `and` (all must
/// hold): `FBillNo='X'`, `FBillNo in ('A','B')`, `FBillNo like 'JSTPD%'`, `FID=1`,
/// `FDate>='2026-11-01'` (also `>`, `<=`, `<`, `=`, comparing the date part), or nothing.
/// Anything else is refused, as Kingdee refuses a FilterString it cannot read.
pub(super) enum Filter {
    All,
    BillNo(BTreeSet<String>),
    BillNoLike(String),
    Id(i64),
    Date(std::cmp::Ordering, bool, String),
    And(Vec<Filter>),
}

impl Filter {
    pub(super) fn parse(text: &str) -> Option<Filter> {
        let text = text.trim();
        if text.is_empty() {
            return Some(Filter::All);
        }
        let lower = text.to_ascii_lowercase();
        if lower.contains(" and ") {
            let mut parts = Vec::new();
            let mut rest = text;
            while let Some(at) = rest.to_ascii_lowercase().find(" and ") {
                parts.push(Filter::parse(&rest[..at])?);
                rest = &rest[at + 5..];
            }
            parts.push(Filter::parse(rest)?);
            return Some(Filter::And(parts));
        }
        if let Some(rest) = lower.strip_prefix("fid") {
            return rest
                .trim()
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
                .map(Filter::Id);
        }
        if let Some(rest) = lower.strip_prefix("fdate") {
            let rest = rest.trim_start();
            let (ordering, or_equal, value) = if let Some(v) = rest.strip_prefix(">=") {
                (std::cmp::Ordering::Greater, true, v)
            } else if let Some(v) = rest.strip_prefix("<=") {
                (std::cmp::Ordering::Less, true, v)
            } else if let Some(v) = rest.strip_prefix('>') {
                (std::cmp::Ordering::Greater, false, v)
            } else if let Some(v) = rest.strip_prefix('<') {
                (std::cmp::Ordering::Less, false, v)
            } else {
                (std::cmp::Ordering::Equal, true, rest.strip_prefix('=')?)
            };
            let date = value.trim().strip_prefix('\'')?.strip_suffix('\'')?;
            return Some(Filter::Date(
                ordering,
                or_equal,
                date.get(..10)?.to_string(),
            ));
        }
        if let Some(rest) = lower.strip_prefix("fbillno") {
            let rest = rest.trim_start();
            if rest.starts_with("like ") {
                // The pattern as written (the bill number's case matters).
                let original = text[text.len() - rest.len() + 5..].trim();
                let pattern = original.strip_prefix('\'')?.strip_suffix('\'')?;
                return Some(Filter::BillNoLike(pattern.to_string()));
            }
        }
        numbers_of("fbillno", text).map(Filter::BillNo)
    }

    pub(super) fn matches(&self, bill: &SavedBill) -> bool {
        match self {
            Filter::All => true,
            Filter::BillNo(numbers) => numbers.contains(&bill.bill_no),
            Filter::BillNoLike(pattern) => like(pattern, &bill.bill_no),
            Filter::Id(id) => bill.id == *id,
            Filter::Date(ordering, or_equal, date) => {
                let Some(day) = bill
                    .model
                    .get("FDate")
                    .and_then(Value::as_str)
                    .and_then(|d| d.get(..10))
                else {
                    return false;
                };
                let compared = day.cmp(date.as_str());
                compared == *ordering || (*or_equal && compared == std::cmp::Ordering::Equal)
            }
            Filter::And(parts) => parts.iter().all(|p| p.matches(bill)),
        }
    }
}

/// SQL `like` with `%` (any run) and `_` (one character).
fn like(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some(('_', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    go(&p, &t)
}
