//! `producer`: polls Jushuitan and publishes count documents to `{prefix}.counts`.
//!
//! Only one producer polls at a time: it first takes the broker-side lock (see
//! [`producer::Exclusion`]).

use std::process::ExitCode;

use clap::Parser;
use common::telemetry::Stage;
use common::worker::{self, WorkerArgs};

/// Polls Jushuitan for stock-count documents and publishes them with confirms.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> ExitCode {
    worker::main(
        Stage::Producer,
        "0.0.0.0:9791",
        Args::parse().worker,
        producer::start,
    )
}
