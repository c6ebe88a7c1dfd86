//! `jst2kd`: the operations CLI — the built-in demo and the simulators.
//!
//! Command output goes to stdout, logs to stderr. Exit codes: 0 success, 1 runtime failure,
//! 2 usage or configuration error.

mod backfill;
mod bench;
mod check;
mod demo;
mod dlq;
mod permissions;
mod preflight;
mod preview;
mod progress;
mod reconcile;
mod simulators;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Operations CLI of jst2kd (Jushuitan stock counts → Kingdee other-outbound bills).
#[derive(Parser)]
#[command(name = "jst2kd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline once against built-in simulators and print a summary.
    Demo(demo::DemoArgs),
    /// Measure the pipeline on this machine against the broker's own ceiling.
    Bench(bench::BenchArgs),
    /// Publish the documents of a past period without touching the producer's checkpoint.
    Backfill(backfill::BackfillArgs),
    /// Check the configuration and reach RabbitMQ, Jushuitan and Kingdee.
    Check(check::CheckArgs),
    /// Inspect, replay, purge and export dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Print the RabbitMQ users of the pipeline and the permissions each needs.
    Permissions(permissions::PermissionsArgs),
    /// Print the Kingdee bills a JST count document becomes (JSON on stdout).
    Preview(preview::PreviewArgs),
    /// Compare the bills in Kingdee with what Jushuitan's count documents of a period map to.
    Reconcile(reconcile::ReconcileArgs),
    /// A count document's history from the outcome log, and where it is now.
    Trace(trace::TraceArgs),
    /// Run a simulator as an HTTP server.
    #[command(subcommand)]
    Sim(simulators::SimCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jst2kd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Backfill(args) => backfill::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Permissions(args) => permissions::run(args),
            Command::Preview(args) => preview::run(args),
            Command::Dlq(cmd) => dlq::run(cmd).await,
            Command::Check(args) => check::run(args).await,
            Command::Sim(cmd) => simulators::run(cmd).await,
            Command::Trace(args) => trace::run(args).await,
            Command::Reconcile(args) => reconcile::run(args).await,
        }
    });
    common::worker::leave_runtime(runtime);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jst2kd: {e:#}");
            // A configuration error, or a preflight that could not ask a service.
            let usage = e.chain().any(|c| {
                c.downcast_ref::<common::config::ConfigError>().is_some()
                    || c.downcast_ref::<preflight::CouldNotAsk>().is_some()
            });
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
