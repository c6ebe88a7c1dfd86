//! The environment layer: `JST2KD_<SECTION>__<KEY>` variables as a nested dictionary of text.

use figment::value::{Dict, Value};

use super::ENV_PREFIX;

/// Builds a nested dictionary of text values from `JST2KD_<SECTION>__<KEY>` variables.
///
/// Only names with the double underscore are read: Kubernetes injects variables such as
/// `JST2KD_PRODUCER_SERVICE_HOST` that must not be taken for configuration.
pub(super) fn env_dict(env: impl IntoIterator<Item = (String, String)>) -> Dict {
    let mut root = Dict::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        // Section and key are case-insensitive; deeper segments are map keys (an SKU, a
        // warehouse) and keep their case.
        let path: Vec<String> = rest
            .split("__")
            .enumerate()
            .map(|(i, p)| {
                if i < 2 {
                    p.to_ascii_lowercase()
                } else {
                    p.to_string()
                }
            })
            .collect();
        if path.iter().any(String::is_empty) {
            continue;
        }
        insert_path(&mut root, &path, value);
    }
    root
}

fn insert_path(dict: &mut Dict, path: &[String], value: String) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), Value::from(value));
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}
