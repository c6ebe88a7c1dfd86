//! `jst2kd sim jst` and `jst2kd sim kingdee`: the simulators as HTTP servers, until SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use common::telemetry::LogFormat;
use sim::jst::{JstBehaviour, JstCredentials, JstSim};
use sim::kingdee::{KingdeeBehaviour, KingdeeCredentials, KingdeeSim, MasterData};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Subcommand)]
pub enum SimCommand {
    /// The Jushuitan open platform (count query).
    Jst {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// A JSON array of count documents exactly as JST returns them.
        #[arg(long, conflicts_with = "generate")]
        data: Option<PathBuf>,
        /// Generate this many realistic documents.
        #[arg(long)]
        generate: Option<usize>,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Accepted app_key.
        #[arg(long, default_value_t = JstCredentials::default().app_key)]
        app_key: String,
        /// Accepted app_secret.
        #[arg(long, default_value_t = JstCredentials::default().app_secret)]
        app_secret: String,
        /// Access token valid at start.
        #[arg(long, default_value_t = JstCredentials::default().access_token)]
        access_token: String,
        /// Refresh token valid at start.
        #[arg(long, default_value_t = JstCredentials::default().refresh_token)]
        refresh_token: String,
        /// Enforce the per-app limits of 5 calls per second and 100 per minute (codes 199, 200).
        #[arg(long, value_enum, default_value = "on")]
        rate_limit: OnOff,
        /// Share of business calls that fail: HTTP 502, a truncated body or code 199.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Access tokens expire after this long (code 100), e.g. "2m".
        #[arg(long, value_parser = common::config::parse_duration)]
        token_ttl: Option<Duration>,
        /// The kind of app: `own` (refreshToken and getInitToken work) or `isv` (refreshToken
        /// answers code 150, as for service-provider apps since 2023-08-15).
        #[arg(long, default_value = "own", value_parser = ["own", "isv"])]
        app_kind: String,
    },
    /// The Kingdee WebAPI (site path /k3cloud).
    Kingdee {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8082")]
        listen: String,
        /// Master data JSON (see the README): {"orgs":[…],"stocks":["CK1",{"number","org","locations"}],
        /// "materials":[{"number","unit","lot"}],"departments":[…],"allow_negative":true,"on_hand":{…}}.
        #[arg(long)]
        master_data: Option<PathBuf>,
        /// Accepted acct_id.
        #[arg(long, default_value_t = KingdeeCredentials::default().acct_id)]
        acct_id: String,
        /// Accepted user name.
        #[arg(long, default_value_t = KingdeeCredentials::default().user_name)]
        user: String,
        /// Accepted app_id.
        #[arg(long, default_value_t = KingdeeCredentials::default().app_id)]
        app_id: String,
        /// Accepted app_secret.
        #[arg(long, default_value_t = KingdeeCredentials::default().app_secret)]
        app_secret: String,
        /// Accepted password (ValidateUser sessions).
        #[arg(long, default_value_t = KingdeeCredentials::default().password)]
        password: String,
        /// Sessions expire after this long unused, e.g. "20m".
        #[arg(long, value_parser = common::config::parse_duration, default_value = "20m")]
        session_ttl: Duration,
        /// Share of write calls answered HTTP 500, half of them after the bills were committed.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Share of write calls refused for every bill with MsgCode 13 or 14.
        #[arg(long, default_value_t = 0.0)]
        busy_rate: f64,
        /// Milliseconds added to every call.
        #[arg(long, default_value_t = 0)]
        latency: u64,
        /// Seed of the fault injection.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub async fn run(cmd: SimCommand) -> anyhow::Result<()> {
    common::telemetry::init_logging(LogFormat::Json);
    let (listen, router, what) = match cmd {
        SimCommand::Jst {
            listen,
            data,
            generate,
            seed,
            app_key,
            app_secret,
            access_token,
            refresh_token,
            rate_limit,
            fail_rate,
            token_ttl,
            app_kind,
        } => {
            if !(0.0..=1.0).contains(&fail_rate) {
                return Err(usage(anyhow::anyhow!(
                    "--fail-rate must be between 0 and 1"
                )));
            }
            let docs = match (data, generate) {
                (Some(path), _) => {
                    let text = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_slice::<Vec<serde_json::Value>>(&text)
                        .with_context(|| {
                            format!("{} is not a JSON array of count documents", path.display())
                        })
                        .map_err(usage)?
                }
                (None, Some(n)) => sim::jst::generate(n, seed),
                (None, None) => Vec::new(),
            };
            let count = docs.len();
            let behaviour = JstBehaviour {
                rate_limit: rate_limit == OnOff::On,
                fail_rate,
                token_ttl,
                isv: app_kind == "isv",
                seed,
                ..JstBehaviour::default()
            };
            let creds = JstCredentials {
                app_key,
                app_secret,
                access_token,
                refresh_token,
            };
            let sim = JstSim::with_behaviour(creds, docs, behaviour);
            (
                listen,
                sim.router(),
                format!("Jushuitan simulator with {count} documents"),
            )
        }
        SimCommand::Kingdee {
            listen,
            master_data,
            acct_id,
            user,
            app_id,
            app_secret,
            password,
            session_ttl,
            fail_rate,
            busy_rate,
            latency,
            seed,
        } => {
            if !(0.0..=1.0).contains(&(fail_rate + busy_rate)) || fail_rate < 0.0 || busy_rate < 0.0
            {
                return Err(usage(anyhow::anyhow!(
                    "--fail-rate and --busy-rate must be between 0 and 1, together at most 1"
                )));
            }
            let master = match master_data {
                Some(path) => {
                    let text = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(
                        serde_json::from_slice::<MasterData>(&text)
                            .with_context(|| format!("{} is not valid master data", path.display()))
                            .map_err(usage)?,
                    )
                }
                None => None,
            };
            kingdee::sign::client_sec(&app_id)
                .map_err(|e| usage(anyhow::anyhow!("--app-id: {e}")))?;
            let behaviour = KingdeeBehaviour {
                fail_rate,
                busy_rate,
                latency: Duration::from_millis(latency),
                session_ttl,
                seed,
            };
            let creds = KingdeeCredentials {
                acct_id,
                user_name: user,
                app_id,
                app_secret,
                password,
            };
            let sim = KingdeeSim::with_behaviour(creds, master, behaviour);
            (listen, sim.router(), "Kingdee simulator".to_string())
        }
    };
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let cancel = CancellationToken::new();
    let health = common::telemetry::Health::new();
    common::worker::spawn_signal_handler(cancel.clone(), health);
    info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or(listen), "{what} listening.");
    sim::serve(listener, router, cancel)
        .await
        .context("simulator server failed")?;
    Ok(())
}

/// A switch.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Marks an error as a usage error (exit 2).
fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(common::config::ConfigError(format!("{e:#}")))
}
