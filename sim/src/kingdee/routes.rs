//! The HTTP side: the `*.common.kdsvc` services, both body shapes, faults, and the `/_sim/` hooks.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::*;

pub(super) fn status_error(msg_code: i64, message: &str) -> Value {
    json!({"Result": {"ResponseStatus": {"ErrorCode": 500, "IsSuccess": false,
        "Errors": [{"FieldName": null, "Message": message, "DIndex": 0}],
        "SuccessEntitys": [], "SuccessMessages": [], "MsgCode": msg_code}}})
}

pub(super) fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "<html><body>Server Error in '/k3cloud' Application.</body></html>",
    )
        .into_response()
}

/// Every bill of the call refused with a passing condition (13 bill locked, 14 call limit).
pub(super) fn busy(data: &Value, msg_code: i64) -> Value {
    let count = match data.get("Model") {
        Some(Value::Array(m)) => m.len(),
        _ => 1,
    };
    let message = if msg_code == 13 {
        "网控冲突：单据正在被其他用户操作，请稍后再试"
    } else {
        "调用次数超过限制，请稍后再试"
    };
    let errors: Vec<Value> = (0..count)
        .map(|i| json!({"FieldName": null, "Message": message, "DIndex": i}))
        .collect();
    json!({"Result": {"ResponseStatus": {"ErrorCode": 500, "IsSuccess": false, "Errors": errors,
        "SuccessEntitys": [], "SuccessMessages": [], "MsgCode": msg_code}}})
}

pub(super) fn session_lost() -> Value {
    status_error(1, "会话信息已丢失，请重新登录")
}

/// Takes a JSON argument that may arrive as an object or as JSON text.
pub(super) fn argument(v: Option<&mut Value>) -> Option<Value> {
    match v? {
        Value::String(s) => serde_json::from_str(s).ok(),
        other => Some(other.take()),
    }
}

/// The (formid, data) of either body shape, taken out of it (a bill is never copied on its
/// way to the store); ExecuteBillQuery has only `data`.
pub(super) fn arguments(mut body: Value, data_only: bool) -> Option<(String, Value)> {
    if let Some(params) = body.get_mut("parameters").and_then(Value::as_array_mut) {
        if data_only {
            return Some((String::new(), argument(params.first_mut())?));
        }
        let form = params.first()?.as_str()?.to_string();
        return Some((form, argument(params.get_mut(1))?));
    }
    let form = body
        .get("formid")
        .or_else(|| body.get("FormId"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Some((form, argument(body.get_mut("data"))?))
}

pub(super) async fn service(
    State(sim): State<KingdeeSim>,
    Path((_site, service)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lower = service.to_ascii_lowercase();
    let Some(name) = lower
        .strip_suffix(".common.kdsvc")
        .and_then(|s| s.strip_prefix("kingdee.bos.webapi.servicesstub."))
        .map(str::to_string)
    else {
        return (StatusCode::NOT_FOUND, "unknown service").into_response();
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        sim.count("bad_body");
        return Json(status_error(8, "请求的JSON格式不正确")).into_response();
    };
    if name == "authservice.validateuser" || name == "authservice.loginbysign" {
        return sim.login(&name, &body);
    }
    let turn = match sim.authenticate(&headers, uri.path()) {
        Ok(turn) => turn,
        Err(answer) => {
            sim.count("refused_auth");
            let answer = if name.ends_with("executebillquery") {
                json!([[answer]])
            } else {
                answer
            };
            return Json(answer).into_response();
        }
    };
    // One call at a time per session, as IIS serves them.
    let _turn = match turn {
        Some(t) => Some(t.lock_owned().await),
        None => None,
    };
    let latency = sim.inner.behaviour.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match name.as_str() {
        "dynamicformservice.batchsave" | "dynamicformservice.save" => {
            sim.count("batch_save");
            let Some((form, data)) = arguments(body, false) else {
                return Json(status_error(8, "缺少参数 formid 或 data")).into_response();
            };
            match sim.write_fault() {
                WriteFault::None => Json(sim.batch_save(&form, data)).into_response(),
                WriteFault::FailBeforeCommit => {
                    sim.count("fault_500_before_commit");
                    server_error()
                }
                WriteFault::FailAfterCommit => {
                    sim.count("fault_500_after_commit");
                    sim.batch_save(&form, data);
                    server_error()
                }
                WriteFault::Busy(code) => {
                    sim.count("fault_busy");
                    Json(busy(&data, code)).into_response()
                }
            }
        }
        "dynamicformservice.submit" | "dynamicformservice.audit" => {
            let audit = name.ends_with("audit");
            sim.count(if audit { "audit" } else { "submit" });
            let Some((form, data)) = arguments(body, false) else {
                return Json(status_error(8, "缺少参数 formid 或 data")).into_response();
            };
            match sim.write_fault() {
                WriteFault::FailBeforeCommit => server_error(),
                WriteFault::FailAfterCommit => {
                    sim.operate(audit, &form, &data);
                    server_error()
                }
                WriteFault::Busy(code) => Json(busy(&json!({}), code)).into_response(),
                WriteFault::None => Json(sim.operate(audit, &form, &data)).into_response(),
            }
        }
        "dynamicformservice.view" => {
            sim.count("view");
            let Some((form, data)) = arguments(body, false) else {
                return Json(status_error(8, "缺少参数 formid 或 data")).into_response();
            };
            Json(sim.view(&form, &data)).into_response()
        }
        "dynamicformservice.executebillquery" => {
            sim.count("execute_bill_query");
            let Some((_, data)) = arguments(body, true) else {
                return Json(json!([[status_error(8, "缺少参数 data")]])).into_response();
            };
            Json(sim.query(&data)).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "service not simulated").into_response(),
    }
}

pub(super) async fn expire_sessions(State(sim): State<KingdeeSim>) -> Json<Value> {
    sim.expire_sessions();
    Json(json!({"expired": true}))
}

pub(super) async fn list_bills(State(sim): State<KingdeeSim>) -> Json<Value> {
    Json(json!(sim.bills()))
}

pub(super) async fn delete_bill(
    State(sim): State<KingdeeSim>,
    Path((form, bill_no)): Path<(String, String)>,
) -> (StatusCode, Json<Value>) {
    if sim.delete_bill(&form, &bill_no) {
        (StatusCode::OK, Json(json!({"deleted": bill_no})))
    } else {
        (StatusCode::NOT_FOUND, Json(json!({"deleted": null})))
    }
}

pub(super) async fn stats(State(sim): State<KingdeeSim>) -> Json<Value> {
    let store = sim.store();
    Json(json!({"counts": store.stats, "bills": store.bills.len()}))
}
