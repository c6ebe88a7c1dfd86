//! `loader`: consumes `{prefix}.bills` and saves them in Kingdee.

use std::process::ExitCode;

use clap::Parser;
use common::telemetry::Stage;
use common::worker::{self, WorkerArgs};

/// Saves Kingdee bills with BatchSave and settles each by its own result.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> ExitCode {
    worker::main(
        Stage::Loader,
        "0.0.0.0:9793",
        Args::parse().worker,
        loader::start,
    )
}
