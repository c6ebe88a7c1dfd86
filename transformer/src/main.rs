//! `transformer`: consumes `{prefix}.counts`, publishes bills to `{prefix}.bills`.

use std::process::ExitCode;

use clap::Parser;
use common::telemetry::Stage;
use common::worker::{self, WorkerArgs};

/// Maps Jushuitan count documents to Kingdee other-outbound bills.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> ExitCode {
    worker::main(
        Stage::Transformer,
        "0.0.0.0:9792",
        Args::parse().worker,
        transformer::start,
    )
}
