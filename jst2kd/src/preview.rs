//! `jst2kd preview [--config F] FILE`: the Kingdee bills a JST count document becomes, as the
//! transformer would publish them — a JSON array of `kd.bill.v1` bodies on stdout.
//!
//! A skipped document prints `[]` and its reason on stderr; a mapping error exits 1 and says
//! on stderr what to add to the configuration.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use common::config::ConfigError;
use common::worker::{self, WorkerArgs};
use serde_json::Value;
use transformer::{Mapped, MappingConfig, SkipReason, map_document};

#[derive(Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// A count document as JST returns it (JSON object), or a JSON array of them.
    file: PathBuf,
}

pub fn run(args: PreviewArgs) -> anyhow::Result<()> {
    let (_, layers) = worker::load_config(&args.worker)?;
    let mapping: MappingConfig = layers.section()?;
    let text = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))
        .map_err(|e| ConfigError(format!("{e:#}")))?;
    let input: Value = serde_json::from_slice(&text)
        .map_err(|e| ConfigError(format!("{} is not JSON: {e}", args.file.display())))?;
    let docs = match input {
        Value::Array(docs) => docs,
        doc => vec![doc],
    };
    let mut bills = Vec::new();
    let mut failed = false;
    for doc in &docs {
        let io_id = doc
            .get("io_id")
            .map_or_else(|| "?".to_string(), ToString::to_string);
        match map_document(doc, &mapping) {
            Ok(Mapped::Bills(b)) => bills.extend(b),
            Ok(Mapped::Skipped(reason)) => {
                let why = match reason {
                    SkipReason::Status => format!(
                        "its status {} is not in mapping.statuses ({})",
                        doc.get("status")
                            .map_or_else(|| "(none)".to_string(), ToString::to_string),
                        mapping.statuses.join(", ")
                    ),
                    SkipReason::NoLines => {
                        "no line becomes an entry (no loss, or gains are ignored)".to_string()
                    }
                };
                eprintln!("document {io_id} is skipped: {why}");
            }
            Err(e) => {
                eprintln!("document {io_id} cannot be mapped: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("mapping failed; nothing printed");
    }
    println!("{}", serde_json::to_string_pretty(&bills)?);
    Ok(())
}
