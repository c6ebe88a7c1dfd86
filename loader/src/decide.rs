//! The loader's decisions, pure: what Kingdee answered (a BatchSave result, a submit or audit
//! result, the entries of a bill found under the same number) → what becomes of the bill
//! ([`Settlement`]). No I/O here: the client reports what Kingdee said, `lib.rs` carries out
//! the settlement; each rule is a row of a table test below.

use std::collections::BTreeMap;

use kingdee::{BillError, BillResult, KingdeeError, Operation};

/// What to do with one bill after Kingdee answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Settlement {
    /// Saved now: ack.
    Created,
    /// Its number is already used: it was loaded before; ack.
    Duplicate,
    /// Refused for a reason retrying cannot fix: dead-letter `rejected` with these errors.
    Rejected(Vec<BillError>),
    /// Its number is used by a bill with other content (the JST document changed after it was
    /// booked): dead-letter `conflict` with the existing entries.
    Conflict(Vec<Entry>),
    /// Worth another try later.
    Retry(String),
}

/// What the conflict check compares of an entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// Material number.
    pub material: String,
    /// Stock number.
    pub stock: String,
    /// Quantity, absolute, with six decimals (Kingdee answers `"2"` or `2.0` alike).
    pub qty: String,
    /// Lot number, or empty.
    pub lot: String,
}

/// Written as `[material, stock, qty, lot]`, the shape `jst2kd-kingdee-existing` has always had.
impl serde::Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&self.material, &self.stock, &self.qty, &self.lot).serialize(serializer)
    }
}

/// The fields ExecuteBillQuery returns for the check, in this order.
pub const CHECK_FIELDS: &str = "FBillNo,FMaterialId.FNumber,FStockId.FNumber,FQty,FLot.FNumber";

fn quantity(v: Option<&serde_json::Value>) -> String {
    common::messages::num_field(v).map_or_else(String::new, |q| format!("{:.6}", q.abs()))
}

fn text(v: Option<&serde_json::Value>) -> String {
    common::messages::text_field(v).unwrap_or_default()
}

fn reference(v: Option<&serde_json::Value>) -> String {
    let obj = v.and_then(serde_json::Value::as_object);
    text(obj.and_then(|o| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("FNumber"))
            .map(|(_, n)| n)
    }))
}

/// The sorted entries of a bill model we sent.
pub fn entries_of_model(model: &serde_json::Value) -> Vec<Entry> {
    let mut entries: Vec<Entry> = model
        .get("FEntity")
        .and_then(serde_json::Value::as_array)
        .map(|rows| {
            rows.iter()
                .map(|e| Entry {
                    material: reference(e.get("FMaterialId")),
                    stock: reference(e.get("FStockId")),
                    qty: quantity(e.get("FQty")),
                    lot: reference(e.get("FLot")),
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    entries
}

/// The sorted entries per bill number of ExecuteBillQuery rows in [`CHECK_FIELDS`] order.
pub fn entries_of_rows(rows: &[Vec<serde_json::Value>]) -> BTreeMap<String, Vec<Entry>> {
    let mut bills: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for row in rows {
        let bill_no = text(row.first());
        bills.entry(bill_no).or_default().push(Entry {
            material: text(row.get(1)),
            stock: text(row.get(2)),
            qty: quantity(row.get(3)),
            lot: text(row.get(4)),
        });
    }
    for entries in bills.values_mut() {
        entries.sort();
    }
    bills
}

/// Decides a bill whose number is used, after looking the existing bill up: the same entries
/// → duplicate, other entries → conflict, not found → retry.
pub fn duplicate(existing: Option<&Vec<Entry>>, model: &serde_json::Value) -> Settlement {
    match existing {
        None => Settlement::Retry(
            "kingdee says the bill number is used but the query finds no such bill".into(),
        ),
        Some(entries) if *entries == entries_of_model(model) => Settlement::Duplicate,
        Some(entries) => Settlement::Conflict(entries.clone()),
    }
}

/// `FBillNo in ('A','B')`, quotes doubled.
pub fn bill_no_filter(numbers: &[&str]) -> String {
    let list: Vec<String> = numbers
        .iter()
        .map(|n| format!("'{}'", n.replace('\'', "''")))
        .collect();
    format!("FBillNo in ({})", list.join(","))
}

use kingdee::TRANSIENT_MSG_CODES;

/// Decides a bill's fate from its BatchSave result.
pub fn save(result: &BillResult, bill_no: &str) -> Settlement {
    match result {
        // Kingdee numbered the bill itself: the bill type's numbering rule overrides ours, so
        // the number can no longer tell a re-sent document from a new one. Stop it loudly.
        BillResult::Saved {
            number: Some(n), ..
        } if n != bill_no => Settlement::Rejected(vec![BillError {
            field_name: Some("FBillNo".into()),
            message: format!(
                "Kingdee saved this bill as {n}, not {bill_no}: the bill type's numbering rule replaces manual numbers, so re-sent documents would be booked again. Allow manual numbers for the bill type in Kingdee, delete bill {n} there, then replay."
            ),
        }]),
        BillResult::Saved { .. } => Settlement::Created,
        BillResult::Failed { errors, .. } if errors.iter().any(BillError::is_duplicate_bill_no) => {
            Settlement::Duplicate
        }
        BillResult::Failed { msg_code, errors } if TRANSIENT_MSG_CODES.contains(msg_code) => {
            Settlement::Retry(format!(
                "kingdee MsgCode {msg_code}: {}",
                errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        }
        BillResult::Failed { errors, .. } => Settlement::Rejected(errors.clone()),
        BillResult::Missing => Settlement::Retry("kingdee gave no result for this bill".into()),
    }
}

/// Decides what a submit or audit result changes for a bill already saved (created or
/// duplicate): `None` keeps it as it is (done, or "already done", which doing it again would
/// not change); otherwise the bill is retried or refused.
pub fn operation(
    op: Operation,
    result: Result<Option<&BillResult>, &KingdeeError>,
) -> Option<Settlement> {
    match result {
        Err(e) => Some(Settlement::Retry(format!("{} failed: {e}", op.label()))),
        Ok(Some(BillResult::Saved { .. })) => None,
        Ok(Some(BillResult::Failed { errors, .. }))
            if !errors.is_empty() && errors.iter().all(|e| e.is_already_done(op)) =>
        {
            None
        }
        Ok(Some(BillResult::Failed { msg_code, .. })) if TRANSIENT_MSG_CODES.contains(msg_code) => {
            Some(Settlement::Retry(format!(
                "{} refused for now (MsgCode {msg_code})",
                op.label()
            )))
        }
        Ok(Some(BillResult::Failed { errors, .. })) => {
            let mut all = vec![BillError {
                field_name: None,
                message: format!(
                    "the bill is saved, but Kingdee refused to {} it",
                    op.label()
                ),
            }];
            all.extend(errors.iter().cloned());
            Some(Settlement::Rejected(all))
        }
        Ok(Some(BillResult::Missing) | None) => Some(Settlement::Retry(format!(
            "kingdee gave no {} result for this bill",
            op.label()
        ))),
    }
}

/// After a BatchSave that failed as a whole: what the lookup of the bills' numbers found
/// decides, except that a bill Kingdee does not hold is retried with the call's error.
pub fn after_failed_call(found: Settlement, error: &str) -> Settlement {
    match found {
        Settlement::Retry(_) => Settlement::Retry(error.to_string()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_duplicate_with_the_same_entries_is_acked_and_one_with_others_is_a_conflict() {
        let model = json!({"FEntity": [
            {"FMaterialId": {"FNumber": "A"}, "FStockId": {"FNumber": "CK1"}, "FQty": 2.0},
            {"FMaterialId": {"FNumber": "B"}, "FStockId": {"FNumber": "CK1"}, "FQty": 1, "FLot": {"FNumber": "L1"}},
        ]});
        let same = vec![
            vec![
                json!("X"),
                json!("B"),
                json!("CK1"),
                json!("1"),
                json!("L1"),
            ],
            vec![
                json!("X"),
                json!("A"),
                json!("CK1"),
                json!("2"),
                json!(null),
            ],
        ];
        let existing = entries_of_rows(&same);
        assert_eq!(duplicate(existing.get("X"), &model), Settlement::Duplicate);
        let changed = vec![vec![
            json!("X"),
            json!("A"),
            json!("CK1"),
            json!(5),
            json!(null),
        ]];
        let existing = entries_of_rows(&changed);
        assert!(matches!(
            duplicate(existing.get("X"), &model),
            Settlement::Conflict(_)
        ));
        assert!(matches!(duplicate(None, &model), Settlement::Retry(_)));
        assert_eq!(bill_no_filter(&["A", "O'B"]), "FBillNo in ('A','O''B')");
    }

    fn failed(msg_code: i64, field: Option<&str>, message: &str) -> BillResult {
        BillResult::Failed {
            msg_code,
            errors: vec![BillError {
                field_name: field.map(str::to_string),
                message: message.into(),
            }],
        }
    }

    fn label(s: Option<&Settlement>) -> &'static str {
        match s {
            None => "keep",
            Some(Settlement::Created) => "created",
            Some(Settlement::Duplicate) => "duplicate",
            Some(Settlement::Conflict(_)) => "conflict",
            Some(Settlement::Rejected(_)) => "rejected",
            Some(Settlement::Retry(_)) => "retry",
        }
    }

    #[test]
    fn each_operation_result_has_one_settlement() {
        let timeout = KingdeeError::Transport("timed out".into());
        type Row<'a> = (
            Operation,
            Result<Option<BillResult>, &'a KingdeeError>,
            &'a str,
        );
        let table: Vec<Row> = vec![
            (
                Operation::Submit,
                Ok(Some(BillResult::Saved {
                    id: None,
                    number: None,
                })),
                "keep",
            ),
            (
                Operation::Audit,
                Ok(Some(failed(11, None, "单据已审核，不能重复审核"))),
                "keep",
            ),
            (
                Operation::Submit,
                Ok(Some(failed(11, None, "单据已经审核"))),
                "keep",
            ),
            (
                Operation::Submit,
                Ok(Some(failed(11, None, "不能重复提交"))),
                "keep",
            ),
            // "Not submitted" is no success for an audit.
            (
                Operation::Audit,
                Ok(Some(failed(11, None, "单据状态不是已提交"))),
                "rejected",
            ),
            (
                Operation::Audit,
                Ok(Some(failed(11, None, "已经提交"))),
                "rejected",
            ),
            (
                Operation::Submit,
                Ok(Some(failed(13, None, "网控冲突"))),
                "retry",
            ),
            (
                Operation::Audit,
                Ok(Some(failed(14, None, "调用次数超限"))),
                "retry",
            ),
            (Operation::Audit, Ok(Some(BillResult::Missing)), "retry"),
            (Operation::Audit, Ok(None), "retry"),
            (Operation::Submit, Err(&timeout), "retry"),
        ];
        for (op, result, expected) in table {
            let got = operation(op, result.as_ref().map(Option::as_ref).map_err(|e| *e));
            assert_eq!(label(got.as_ref()), expected, "{op:?} {result:?}");
        }
    }

    #[test]
    fn a_failed_call_retries_what_kingdee_does_not_hold() {
        assert_eq!(
            after_failed_call(Settlement::Retry("not found".into()), "HTTP 500"),
            Settlement::Retry("HTTP 500".into())
        );
        assert_eq!(
            after_failed_call(Settlement::Duplicate, "HTTP 500"),
            Settlement::Duplicate
        );
    }

    #[test]
    fn each_result_has_one_settlement() {
        let dup = "违反字段唯一性要求：编码唯一。[JSTPD1]在当前系统中已经被使用。";
        let table = [
            (
                BillResult::Saved {
                    id: Some(1),
                    number: None,
                },
                "created",
            ),
            (
                BillResult::Saved {
                    id: Some(1),
                    number: Some("B".into()),
                },
                "created",
            ),
            (
                BillResult::Saved {
                    id: Some(1),
                    number: Some("QTCK0001".into()),
                },
                "rejected",
            ),
            (failed(11, Some("FBillNo"), dup), "duplicate"),
            (failed(11, Some("FStockId"), "仓库字段必录"), "rejected"),
            (
                failed(9, Some("FXxx"), "元数据中标识为FXxx的字段不存在"),
                "rejected",
            ),
            (failed(13, None, "网控冲突"), "retry"),
            (failed(14, None, "调用次数超限"), "retry"),
            (BillResult::Missing, "retry"),
        ];
        for (result, expected) in table {
            let got = match save(&result, "B") {
                Settlement::Created => "created",
                Settlement::Duplicate => "duplicate",
                Settlement::Conflict(_) => "conflict",
                Settlement::Rejected(_) => "rejected",
                Settlement::Retry(_) => "retry",
            };
            assert_eq!(got, expected, "{result:?}");
        }
    }
}
