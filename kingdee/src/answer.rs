//! Reading Kingdee's answers: the BatchSave / Submit / Audit envelope (one result per bill, by
//! `DIndex`), ExecuteBillQuery rows, a login, and the lost-session answer. Lenient about
//! booleans and ids given as text, as Kingdee writes them; an answer that cannot be read is an
//! error carrying its first bytes (escaped), never a panic, and a login answer is never quoted
//! (it carries a session).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{BillError, BillResult, KingdeeError, MSG_NO_PERMISSION, MSG_SESSION_LOST};

/// True when a body is Kingdee's "session lost" answer (MsgCode 1), bare or wrapped `[[…]]`.
pub fn is_session_lost(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let status = v
        .pointer("/Result/ResponseStatus")
        .or_else(|| v.pointer("/0/0/Result/ResponseStatus"));
    status.and_then(|s| as_i64(s.get("MsgCode"))) == Some(MSG_SESSION_LOST)
}

/// Reads a login answer: `LoginResultType` 1 (or −5) and the session id.
pub fn read_login(body: &[u8]) -> Result<String, KingdeeError> {
    // A login answer carries a session: never quote it.
    let withheld = |reason: &str| KingdeeError::Body {
        reason: reason.to_string(),
        start: "(login answer withheld)".into(),
    };
    let v: Value =
        serde_json::from_slice(body).map_err(|_| withheld("login answer is not JSON"))?;
    let result = as_i64(v.get("LoginResultType"));
    match result {
        Some(1 | -5) => v
            .get("KDSVCSessionId")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| withheld("login answer without KDSVCSessionId")),
        _ => Err(KingdeeError::Refused {
            msg_code: MSG_NO_PERMISSION,
            message: format!(
                "login refused (LoginResultType {}): {}; check kingdee.acct_id, user_name and the password or app secret",
                result.map_or_else(|| "missing".to_string(), |r| r.to_string()),
                v.get("Message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message")
            ),
        }),
    }
}

pub(crate) fn body_start(body: &[u8]) -> String {
    common::http::body_preview(body, 300)
}

fn unreadable(reason: &str, body: &[u8]) -> KingdeeError {
    KingdeeError::Body {
        reason: reason.to_string(),
        start: body_start(body),
    }
}

fn as_bool(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(s.eq_ignore_ascii_case("true")),
        _ => None,
    }
}

fn as_i64(v: Option<&Value>) -> Option<i64> {
    common::messages::int_field(v)
}

/// Reads a write envelope into one result per model (`count` of them).
pub fn read_batch_save(body: &[u8], count: usize) -> Result<Vec<BillResult>, KingdeeError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| unreadable("not JSON", body))?;
    let status = value
        .pointer("/Result/ResponseStatus")
        .ok_or_else(|| unreadable("no Result.ResponseStatus", body))?;
    let msg_code = as_i64(status.get("MsgCode")).unwrap_or(0);
    let errors: Vec<(Option<i64>, BillError)> = status
        .get("Errors")
        .and_then(Value::as_array)
        .map(|errs| {
            errs.iter()
                .map(|e| {
                    (
                        as_i64(e.get("DIndex")),
                        BillError {
                            field_name: e
                                .get("FieldName")
                                .and_then(Value::as_str)
                                .map(str::to_string),
                            message: e
                                .get("Message")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if matches!(msg_code, MSG_SESSION_LOST | MSG_NO_PERMISSION)
        || (errors.iter().all(|(i, _)| i.is_none()) && !errors.is_empty())
    {
        let message = errors
            .iter()
            .map(|(_, e)| e.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(KingdeeError::Refused { msg_code, message });
    }
    let mut results: Vec<BillResult> = vec![BillResult::Missing; count];
    let mut failed: BTreeMap<usize, Vec<BillError>> = BTreeMap::new();
    for (index, error) in errors {
        if let Some(i) = index
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| *i < count)
        {
            failed.entry(i).or_default().push(error);
        }
    }
    if let Some(saved) = status.get("SuccessEntitys").and_then(Value::as_array) {
        for entity in saved {
            let Some(i) = as_i64(entity.get("DIndex"))
                .and_then(|i| usize::try_from(i).ok())
                .filter(|i| *i < count)
            else {
                continue;
            };
            results[i] = BillResult::Saved {
                id: as_i64(entity.get("Id")),
                number: entity
                    .get("Number")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            };
        }
    }
    for (i, errors) in failed {
        if !matches!(results[i], BillResult::Saved { .. }) {
            results[i] = BillResult::Failed { errors, msg_code };
        }
    }
    // A one-bill call that succeeded may omit DIndex: IsSuccess settles it.
    if count == 1
        && results[0] == BillResult::Missing
        && as_bool(status.get("IsSuccess")) == Some(true)
    {
        results[0] = BillResult::Saved {
            id: None,
            number: None,
        };
    }
    Ok(results)
}

/// Reads an ExecuteBillQuery answer: a 2-D array, or an error object (possibly wrapped `[[…]]`).
pub fn read_query(body: &[u8]) -> Result<Vec<Vec<Value>>, KingdeeError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| unreadable("not JSON", body))?;
    let error_status = value
        .pointer("/0/0/Result/ResponseStatus")
        .or_else(|| value.pointer("/Result/ResponseStatus"));
    if let Some(status) = error_status
        && as_bool(status.get("IsSuccess")) == Some(false)
    {
        let message = status
            .get("Errors")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .filter_map(|x| x.get("Message").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        return Err(KingdeeError::Refused {
            msg_code: as_i64(status.get("MsgCode")).unwrap_or(0),
            message,
        });
    }
    let rows = value
        .as_array()
        .ok_or_else(|| unreadable("not a list of rows", body))?;
    rows.iter()
        .map(|r| {
            r.as_array()
                .cloned()
                .ok_or_else(|| unreadable("a row is not a list", body))
        })
        .collect()
}
