//! `producer`: polls Jushuitan and publishes count documents to `{prefix}.counts`.

use std::process::ExitCode;

use clap::Parser;
use common::config::{ConfigError, Role};
use common::telemetry::Stage;
use common::worker::{self, WorkerArgs, WorkerError};
use jst::JstClient;
use producer::Producer;

/// Polls Jushuitan for stock-count documents and publishes them with confirms.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    worker::main(
        Stage::Producer,
        Role::Producer,
        "0.0.0.0:9791",
        args.worker,
        |config, ctx| async move {
            let client = JstClient::new(&config.jst, Some(ctx.metrics.clone()))
                .map_err(|e| WorkerError::Config(ConfigError(e.to_string())))?;
            let broker = worker::connect_rabbit(&config, "jst2kd-producer", None, &ctx).await?;
            let producer = Producer::new(
                client,
                broker.clone(),
                config.producer.clone(),
                ctx.metrics.clone(),
            );
            let result = producer.run(&ctx).await;
            broker.close().await;
            result.map_err(|e| WorkerError::Runtime(e.to_string()))
        },
    )
}
