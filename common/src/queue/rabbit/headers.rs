//! Our headers (JSON values) as AMQP field tables and back.

use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use serde_json::Value;

use super::*;

/// Our headers as an AMQP table: text as long strings, integers as 64-bit, anything else as JSON.
pub fn to_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(ShortString::from(name.clone()), to_amqp(value));
    }
    table
}

fn to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::String(s) => AMQPValue::LongString(s.clone().into()),
        Value::Number(n) if n.is_i64() => AMQPValue::LongLongInt(n.as_i64().unwrap_or_default()),
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Array(items) => {
            let mut array = FieldArray::default();
            for item in items {
                array.push(to_amqp(item));
            }
            AMQPValue::FieldArray(array)
        }
        Value::Object(map) => {
            let mut table = FieldTable::default();
            for (k, v) in map {
                table.insert(ShortString::from(k.clone()), to_amqp(v));
            }
            AMQPValue::FieldTable(table)
        }
        other => AMQPValue::LongString(other.to_string().into()),
    }
}

/// An AMQP table (headers, `x-death` entries) as JSON.
pub fn from_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), from_amqp(v)))
        .collect()
}

fn from_amqp(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => Value::from(format!("{d:?}")),
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes()).to_string()),
        AMQPValue::ByteArray(b) => Value::from(String::from_utf8_lossy(b.as_slice()).to_string()),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(from_amqp).collect())
        }
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), from_amqp(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
}
