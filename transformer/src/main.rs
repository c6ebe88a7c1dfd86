//! `transformer`: consumes `{prefix}.counts`, publishes bills to `{prefix}.bills`.

use std::process::ExitCode;

use clap::Parser;
use common::config::Role;
use common::queue::Work;
use common::telemetry::Stage;
use common::worker::{self, WorkerArgs, WorkerError};

/// Maps Jushuitan count documents to Kingdee other-outbound bills.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    worker::main(
        Stage::Transformer,
        Role::Transformer,
        "0.0.0.0:9792",
        args.worker,
        |config, ctx| async move {
            let broker =
                worker::connect_rabbit(&config, "jst2kd-transformer", Some(Work::Counts), &ctx)
                    .await?;
            let result =
                transformer::run(&config.mapping, config.amqp.prefetch, broker.clone(), ctx).await;
            broker.close().await;
            result.map_err(WorkerError::from)
        },
    )
}
