//! `producer`: polls Jushuitan and publishes count documents to `{prefix}.counts`.
//!
//! Only one producer polls at a time: it first takes the broker-side lock (an exclusive queue
//! on a connection of its own). A second producer waits, not ready, and takes over when the
//! first is gone; a producer that loses its lock stops polling before it tries again.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use common::config::{ConfigError, Role};
use common::queue::Topology;
use common::queue::rabbit::{LockError, ProducerLock};
use common::telemetry::Stage;
use common::worker::{self, WorkerArgs, WorkerError};
use jst::JstClient;
use producer::Producer;
use tracing::{info, warn};

/// Polls Jushuitan for stock-count documents and publishes them with confirms.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

/// Pause between two attempts to take the lock.
const LOCK_RETRY: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let args = Args::parse();
    worker::main(
        Stage::Producer,
        Role::Producer,
        "0.0.0.0:9791",
        args.worker,
        |config, ctx| async move {
            let client = JstClient::new(&config.jst, Some(ctx.metrics.clone()))
                .and_then(|c| c.with_token_file(jst::token_file_for(&config.producer.checkpoint)))
                .map_err(|e| WorkerError::Config(ConfigError(e.to_string())))?;
            ctx.health.set("lock", false);
            let broker = worker::connect_rabbit(&config, "jst2kd-producer", None, &ctx).await?;
            let producer = Producer::new(
                client,
                broker.clone(),
                config.producer.clone(),
                ctx.metrics.clone(),
            );
            let lock_queue = Topology::from_config(&config.amqp).lock_queue();
            let lock_name = format!("jst2kd-producer-lock-{}", std::process::id());
            let mut waiting_logged = false;
            let result = loop {
                if ctx.cancel.is_cancelled() {
                    break Ok(());
                }
                match ProducerLock::acquire(&config.amqp.url, &lock_name, &lock_queue).await {
                    Ok(lock) => {
                        info!(lock = %lock_queue, "Holding the producer lock; polling.");
                        waiting_logged = false;
                        ctx.health.set("lock", true);
                        let outcome = tokio::select! {
                            r = producer.run(&ctx.cancel, &ctx.health) => Some(r),
                            () = lock.lost() => None,
                        };
                        ctx.health.set("lock", false);
                        match outcome {
                            Some(r) => {
                                lock.release().await;
                                break r;
                            }
                            None => warn!(
                                "The producer lock's connection dropped; polling stopped. Trying to take the lock again."
                            ),
                        }
                    }
                    Err(LockError::Held) => {
                        if !waiting_logged {
                            info!(lock = %lock_queue, "Another producer holds the lock; waiting (not ready).");
                            waiting_logged = true;
                        }
                    }
                    Err(LockError::Unavailable(e)) => {
                        warn!(error = %e, "Cannot reach RabbitMQ for the producer lock; retrying.")
                    }
                }
                tokio::select! {
                    () = ctx.cancel.cancelled() => break Ok(()),
                    () = tokio::time::sleep(LOCK_RETRY) => {}
                }
            };
            if let Some(fatal) = broker.fatal() {
                return Err(WorkerError::Queue(fatal));
            }
            broker.close().await;
            result.map_err(|e| WorkerError::Runtime(e.to_string()))
        },
    )
}
