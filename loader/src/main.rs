//! `loader`: consumes `{prefix}.bills` and saves them in Kingdee.

use std::process::ExitCode;

use clap::Parser;
use common::config::Role;
use common::queue::Work;
use common::telemetry::Stage;
use common::worker::{self, WorkerArgs, WorkerError};
use kingdee::KingdeeClient;

/// Saves Kingdee bills with BatchSave and settles each by its own result.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    worker::main(
        Stage::Loader,
        Role::Loader,
        "0.0.0.0:9793",
        args.worker,
        |config, ctx| async move {
            let client = KingdeeClient::new(
                &config.kingdee,
                config.loader.concurrency,
                Some(ctx.metrics.clone()),
            )
            .map_err(|e| WorkerError::Config(common::config::ConfigError(e.to_string())))?;
            let broker =
                worker::connect_rabbit(&config, "jst2kd-loader", Some(Work::Bills), &ctx).await?;
            let result = loader::run(
                &config.loader,
                config.amqp.prefetch,
                broker.clone(),
                client,
                ctx,
            )
            .await;
            broker.close().await;
            result.map_err(WorkerError::from)
        },
    )
}
