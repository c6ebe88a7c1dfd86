//! `jst2kd backfill --from T --to T`: publishes the documents of a past period, in windows of
//! at most 7 days, without touching the producer's checkpoint.
//!
//! It uses the producer's token file (a refreshed token is kept there for both) and publishes
//! with confirms like the producer; documents already loaded come through as duplicates.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use common::config::{ConfigError, FromLayers};
use common::telemetry::Stage;
use common::time::{format_beijing, parse_beijing};
use common::worker::{self, Context, WorkerArgs};
use producer::{MAX_WINDOW, Producer, windows};

#[derive(Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Start of the period (Beijing `yyyy-MM-dd HH:mm:ss`, or RFC 3339).
    #[arg(long)]
    from: String,
    /// End of the period.
    #[arg(long)]
    to: String,
}

pub async fn run(args: BackfillArgs) -> anyhow::Result<()> {
    let (process, layers) = worker::load_config(&args.worker)?;
    let config = producer::Config::from_layers(&layers)?;
    common::telemetry::init_logging(process.runtime.log_format);
    let time = |key: &str, text: &str| {
        parse_beijing(text).ok_or_else(|| {
            ConfigError(format!(
                "--{key} must be a time such as \"2026-03-01 00:00:00\" (Beijing)"
            ))
        })
    };
    let (from, to) = (time("from", &args.from)?, time("to", &args.to)?);
    if to <= from {
        return Err(ConfigError("--to must be after --from".into()).into());
    }
    let ctx = Context::new(&[Stage::Producer]);
    worker::spawn_signal_handler(ctx.cancel.clone(), ctx.health.clone());
    // Every failure here is a configuration problem (exit 2).
    let client =
        producer::client(&config, ctx.metrics.clone()).map_err(|e| ConfigError(e.to_string()))?;
    let broker = worker::connect_rabbit(&config.amqp, "jst2kd-backfill", None, &ctx).await?;
    let producer = Producer::new(
        client,
        broker.clone(),
        config.producer.clone(),
        ctx.metrics.clone(),
    );
    let all = windows(from, to, MAX_WINDOW);
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let (mut fetched, mut published) = (0, 0);
    for (i, (begin, end)) in all.iter().enumerate() {
        if ctx.cancel.is_cancelled() {
            broker.close().await;
            anyhow::bail!(
                "interrupted after {i} of {} windows ({published} documents published)",
                all.len()
            );
        }
        let (f, p) = producer
            .publish_window(*begin, *end, false)
            .await
            .with_context(|| {
                format!("window {} – {}", format_beijing(begin), format_beijing(end))
            })?;
        fetched += f;
        published += p;
        if progress {
            // The time left, from the pace so far (windows cost about the same: one query per
            // status and page, paced by the app's limits).
            let done = i + 1;
            let per_window = started.elapsed().as_secs_f64() / done as f64;
            let left = per_window * (all.len() - done) as f64;
            eprintln!(
                "  window {done}/{}: {} – {}: {p} documents ({published} in all), about {:.0} s left",
                all.len(),
                format_beijing(begin),
                format_beijing(end),
                left
            );
        }
    }
    ctx.cancel.cancel();
    broker.close().await;
    println!(
        "backfill {} – {} (statuses {})",
        format_beijing(&from),
        format_beijing(&to),
        config.producer.statuses.join(", ")
    );
    println!("windows: {}", all.len());
    println!("documents fetched: {fetched}");
    println!("documents published: {published}");
    println!("elapsed: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
