//! `jst2kd dlq list | show ID | replay | purge | export`: inspect and act on dead letters.
//!
//! Every command reads the whole dead-letter queue onto a channel of its own without
//! acknowledging anything; what is not removed goes back, in order, when the channel closes.
//! `replay` publishes each chosen message back to its origin, waits for the broker's confirm,
//! and only then removes the dead letter: an interrupted replay leaves the rest in place, and a
//! message published but not yet removed is replayed again later, which the pipeline's
//! idempotent bill numbers absorb.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use common::config::{ConfigError, parse_duration};
use common::http::escape as esc;
use common::messages::{Headers, header, header_int, header_text};
use common::queue::rabbit::{HeldDeadLetter, RabbitBroker};
use common::queue::{AmqpConfig, Broker, Destination, Outgoing, Topology, Work};
use common::worker::{self, WorkerArgs};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters (oldest first); nothing is removed or reordered.
    List(Selection),
    /// Show dead letters in full: ID is a position from `list` or a message id.
    Show {
        /// Position (from `list`) or message id.
        id: String,
        #[command(flatten)]
        selection: Selection,
    },
    /// Publish dead letters back to their origin queue, then remove them.
    Replay(Selection),
    /// Remove dead letters for good.
    Purge {
        #[command(flatten)]
        selection: Selection,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Print dead letters in full as JSON lines (headers and body); nothing is removed.
    Export(Selection),
}

/// Output format of `list`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Columns for people.
    Table,
    /// One JSON object per line.
    Json,
}

/// Which dead letters a command acts on.
#[derive(Args, Clone)]
pub struct Selection {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Only this stage: transformer or loader.
    #[arg(long)]
    stage: Option<String>,
    /// Only this kind: malformed, mapping, rejected, conflict, exhausted, too_large, poison.
    #[arg(long)]
    kind: Option<String>,
    /// Only those whose error or body contains this text.
    #[arg(long)]
    grep: Option<String>,
    /// Only this message id.
    #[arg(long)]
    message_id: Option<String>,
    /// Only those dead-lettered longer ago than this (e.g. "2h").
    #[arg(long, value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// At most this many (oldest first).
    #[arg(long)]
    limit: Option<usize>,
    /// Say what would be done, do nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// What `list` shows of a dead letter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct View {
    /// Position in the queue, from 1.
    pub position: usize,
    /// `message_id`.
    pub message_id: String,
    /// Stage that dead-lettered it.
    pub stage: String,
    /// `jst2kd-error-kind`, or `poison` when the broker dead-lettered it.
    pub kind: String,
    /// The reason.
    pub error: String,
    /// When (RFC 3339).
    pub failed_at: String,
    /// Where `replay` sends it.
    pub origin_queue: String,
    /// The routing key `replay` uses.
    pub origin_key: String,
    /// Tries before it was dead-lettered.
    pub attempts: i64,
    /// How often it was replayed.
    pub replayed: i64,
}

/// The newest `x-death` entry (the broker puts it first).
fn newest_death(headers: &Headers) -> Option<&serde_json::Map<String, Value>> {
    headers
        .get(header::X_DEATH)?
        .as_array()?
        .first()?
        .as_object()
}

/// Reads a dead letter's headers: ours when we dead-lettered it, the broker's `x-death` when
/// it did (the delivery limit after repeated crashes: `poison`).
pub fn view(position: usize, message_id: &str, headers: &Headers, topology: &Topology) -> View {
    let death = newest_death(headers);
    let death_queue = death
        .and_then(|d| d.get("queue"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let origin_queue = header_text(headers, header::ORIGIN_QUEUE)
        .unwrap_or(death_queue)
        .to_string();
    let origin_key = header_text(headers, header::ORIGIN_KEY)
        .map(str::to_string)
        .or_else(|| {
            death
                .and_then(|d| d.get("routing-keys"))
                .and_then(Value::as_array)
                .and_then(|k| k.first())
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(|| {
            Work::ALL
                .iter()
                .find(|w| topology.work_queue(**w) == origin_queue)
                .map(|w| w.key().to_string())
        })
        .unwrap_or_default();
    let stage = header_text(headers, header::STAGE)
        .map(str::to_string)
        .unwrap_or_else(|| {
            match origin_key.as_str() {
                "counts" => "transformer",
                "bills" => "loader",
                _ => "unknown",
            }
            .to_string()
        });
    let kind = header_text(headers, header::ERROR_KIND)
        .map(str::to_string)
        .unwrap_or_else(|| {
            if death.is_some() {
                "poison".into()
            } else {
                "unknown".into()
            }
        });
    let error = header_text(headers, header::ERROR)
        .map(str::to_string)
        .unwrap_or_else(|| {
            death.map_or_else(String::new, |d| {
                format!(
                    "dead-lettered by the broker ({}) after {} deliveries",
                    d.get("reason").and_then(Value::as_str).unwrap_or("?"),
                    d.get("count").and_then(Value::as_i64).unwrap_or(0)
                )
            })
        });
    let failed_at = header_text(headers, header::FAILED_AT)
        .map(str::to_string)
        .unwrap_or_else(|| {
            death
                .and_then(|d| d.get("time"))
                .and_then(Value::as_i64)
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        });
    let attempts = header_int(headers, header::ATTEMPT)
        .or_else(|| death.and_then(|d| d.get("count")).and_then(Value::as_i64))
        .unwrap_or(0);
    View {
        position,
        message_id: message_id.to_string(),
        stage,
        kind,
        error,
        failed_at,
        origin_queue,
        origin_key,
        attempts,
        replayed: header_int(headers, header::REPLAYED).unwrap_or(0),
    }
}

impl Selection {
    fn matches(&self, v: &View, body: &[u8]) -> bool {
        let older = self.older_than.is_none_or(|age| {
            chrono::DateTime::parse_from_rfc3339(&v.failed_at).is_ok_and(|at| {
                chrono::Utc::now()
                    .signed_duration_since(at)
                    .to_std()
                    .is_ok_and(|d| d >= age)
            })
        });
        self.stage.as_ref().is_none_or(|s| &v.stage == s)
            && self.kind.as_ref().is_none_or(|k| &v.kind == k)
            && self.message_id.as_ref().is_none_or(|m| &v.message_id == m)
            && self.grep.as_ref().is_none_or(|g| {
                v.error.contains(g.as_str()) || String::from_utf8_lossy(body).contains(g.as_str())
            })
            && older
    }
}

/// The headers a replayed message keeps: none of the failure's, one more `jst2kd-replayed`.
pub fn replay_headers(headers: &Headers) -> Headers {
    let kept: Headers = headers
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("x-")
                && ![
                    header::STAGE,
                    header::ERROR_KIND,
                    header::ERROR,
                    header::KINGDEE_ERRORS,
                    header::KINGDEE_EXISTING,
                    header::ORIGIN_QUEUE,
                    header::ORIGIN_KEY,
                    header::FAILED_AT,
                    header::ATTEMPT,
                ]
                .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let replayed = header_int(headers, header::REPLAYED).unwrap_or(0) + 1;
    // Bounded like any copy: a message the broker dead-lettered itself keeps whatever headers
    // it came with, and a copy too large for a frame could never be replayed.
    let mut kept = common::settle::bounded_headers(&kept);
    kept.insert(header::REPLAYED.into(), replayed.into());
    kept
}

fn selection(cmd: &DlqCommand) -> &Selection {
    match cmd {
        DlqCommand::List(s) | DlqCommand::Replay(s) | DlqCommand::Export(s) => s,
        DlqCommand::Show { selection, .. } | DlqCommand::Purge { selection, .. } => selection,
    }
}

pub async fn run(cmd: DlqCommand) -> anyhow::Result<()> {
    let sel = selection(&cmd).clone();
    let (process, layers) = worker::load_config(&sel.worker)?;
    crate::progress::init_logging(process.runtime.log_format, "warn,lapin=error");
    let amqp: AmqpConfig = layers.section()?;
    let topology = Topology::from_config(&amqp);
    let cancel = CancellationToken::new();
    let rabbit = tokio::time::timeout(
        Duration::from_secs(30),
        RabbitBroker::connect(
            amqp.url.clone(),
            "jst2kd-dlq",
            topology.clone(),
            cancel.clone(),
        ),
    )
    .await
    .context("RabbitMQ did not answer within 30 s")??;
    let batch = rabbit.read_dead_letters().await?;
    let mut chosen: Vec<(&HeldDeadLetter, View)> = batch
        .letters
        .iter()
        .map(|l| (l, view(l.position, &l.message_id, &l.headers, &topology)))
        .filter(|(l, v)| sel.matches(v, &l.body))
        .collect();
    if let DlqCommand::Show { id, .. } = &cmd {
        chosen.retain(|(_, v)| v.message_id == *id || v.position.to_string() == *id);
    }
    if let Some(limit) = sel.limit {
        chosen.truncate(limit);
    }
    let result = act(&cmd, &sel, &chosen, &batch, &rabbit, batch.letters.len()).await;
    batch.close().await;
    rabbit.close().await;
    result
}

async fn act(
    cmd: &DlqCommand,
    sel: &Selection,
    chosen: &[(&HeldDeadLetter, View)],
    batch: &common::queue::rabbit::DeadLetterBatch,
    rabbit: &RabbitBroker,
    total: usize,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        DlqCommand::List(_) => match sel.format {
            Format::Json => {
                for (_, v) in chosen {
                    writeln!(out, "{}", serde_json::to_string(v)?)?;
                }
            }
            Format::Table => {
                writeln!(
                    out,
                    "{:>4}  {:<25}  {:<11}  {:<9}  {:<24}  ERROR",
                    "#", "FAILED_AT", "STAGE", "KIND", "MESSAGE_ID"
                )?;
                for (_, v) in chosen {
                    let error: String = esc(&v.error).chars().take(100).collect();
                    writeln!(
                        out,
                        "{:>4}  {:<25}  {:<11}  {:<9}  {:<24}  {error}",
                        v.position,
                        esc(&v.failed_at),
                        esc(&v.stage),
                        esc(&v.kind),
                        esc(&v.message_id)
                    )?;
                }
                writeln!(out, "{} of {total} dead letters", chosen.len())?;
            }
        },
        DlqCommand::Show { id, .. } => {
            if chosen.is_empty() {
                bail!("no dead letter with position or message id {id}");
            }
            for (l, v) in chosen {
                let doc = json!({"view": v, "headers": l.headers, "body": body_json(&l.body)});
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            }
        }
        DlqCommand::Export(_) => {
            let mut progress = crate::progress::Progress::new(
                "exporting",
                "dead letters",
                Some(chosen.len() as u64),
            );
            for (l, v) in chosen {
                let doc = json!({"position": v.position, "message_id": v.message_id, "headers": l.headers, "body": body_json(&l.body)});
                let line = serde_json::to_string(&doc)?;
                progress.suspend(|| writeln!(out, "{line}"))?;
                progress.inc(1);
            }
            out.flush()?;
            progress.finish();
        }
        DlqCommand::Replay(_) => {
            let broker = Broker::Rabbit(rabbit.clone());
            let mut progress = (!sel.dry_run).then(|| {
                crate::progress::Progress::new(
                    "replaying",
                    "dead letters",
                    Some(chosen.len() as u64),
                )
            });
            let mut replayed = 0;
            for (done, (l, v)) in chosen.iter().enumerate() {
                if let Some(progress) = &mut progress {
                    progress.set(done as u64);
                }
                let Some(work) = Work::ALL.into_iter().find(|w| w.key() == v.origin_key) else {
                    let skipped = |out: &mut std::io::StdoutLock| {
                        writeln!(
                            out,
                            "skipped #{} {}: no origin to replay to",
                            v.position,
                            esc(&v.message_id)
                        )
                    };
                    match &progress {
                        Some(progress) => progress.suspend(|| skipped(&mut out))?,
                        None => skipped(&mut out)?,
                    }
                    continue;
                };
                if sel.dry_run {
                    writeln!(
                        out,
                        "would replay #{} {} to {} ({})",
                        v.position,
                        esc(&v.message_id),
                        esc(&v.origin_queue),
                        esc(&v.kind)
                    )?;
                    continue;
                }
                let message = Outgoing {
                    destination: Destination::Work(work),
                    message_id: v.message_id.clone(),
                    headers: replay_headers(&l.headers),
                    body: l.body.clone(),
                };
                broker.publish(message).await.with_context(|| {
                    format!(
                        "replay stopped at #{} {} ({replayed} replayed before)",
                        v.position,
                        esc(&v.message_id)
                    )
                })?;
                batch.remove(l).await.with_context(|| {
                    format!("#{} {} was replayed but is still in the dead-letter queue; replaying it again is harmless", v.position, esc(&v.message_id))
                })?;
                replayed += 1;
            }
            if let Some(mut progress) = progress {
                progress.set(chosen.len() as u64);
                progress.finish();
            }
            if !sel.dry_run {
                writeln!(out, "replayed: {replayed}")?;
                writeln!(out, "left in the dead-letter queue: {}", total - replayed)?;
            }
        }
        DlqCommand::Purge { yes, .. } => {
            if sel.dry_run {
                for (_, v) in chosen {
                    writeln!(
                        out,
                        "would purge #{} {} ({})",
                        v.position,
                        esc(&v.message_id),
                        esc(&v.kind)
                    )?;
                }
                return Ok(());
            }
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(ConfigError(
                        "purge removes dead letters for good: confirm with --yes".into(),
                    )
                    .into());
                }
                eprint!(
                    "Purge {} of {total} dead letters for good? [y/N] ",
                    chosen.len()
                );
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !answer.trim().eq_ignore_ascii_case("y") {
                    writeln!(out, "purged: 0")?;
                    return Ok(());
                }
            }
            for (l, _) in chosen {
                batch.remove(l).await?;
            }
            writeln!(out, "purged: {}", chosen.len())?;
            writeln!(
                out,
                "left in the dead-letter queue: {}",
                total - chosen.len()
            )?;
        }
    }
    Ok(())
}

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_dead_letters_and_the_brokers_are_read() {
        let t = Topology::from_config(&AmqpConfig::default());
        let mut ours = Headers::new();
        for (k, v) in [
            (header::STAGE, "transformer"),
            (header::ERROR_KIND, "mapping"),
            (header::ERROR, "add \"9\" under [mapping.warehouses]"),
            (header::ORIGIN_QUEUE, "jst2kd.counts"),
            (header::ORIGIN_KEY, "counts"),
            (header::FAILED_AT, "2026-03-01T00:00:00Z"),
        ] {
            ours.insert(k.into(), v.into());
        }
        let v = view(1, "7@m", &ours, &t);
        assert_eq!(
            (v.stage.as_str(), v.kind.as_str(), v.origin_key.as_str()),
            ("transformer", "mapping", "counts")
        );
        let mut poison = Headers::new();
        poison.insert(header::X_DEATH.into(), json!([{"queue": "jst2kd.bills", "reason": "delivery_limit", "count": 21, "routing-keys": ["bills"]}]));
        let v = view(2, "B1", &poison, &t);
        assert_eq!(
            (
                v.stage.as_str(),
                v.kind.as_str(),
                v.origin_queue.as_str(),
                v.attempts
            ),
            ("loader", "poison", "jst2kd.bills", 21)
        );
        let replay = replay_headers(&ours);
        assert_eq!(replay.get(header::REPLAYED), Some(&json!(1)));
        assert!(
            !replay.contains_key(header::ERROR_KIND) && !replay.contains_key(header::ORIGIN_QUEUE)
        );
    }
}
