//! `jst2kd check`: the configuration, then RabbitMQ, Jushuitan and Kingdee, one line each;
//! exit 1 when any fails. Sections a deployment does not use are reported as skipped.

use std::time::Duration;

use clap::Args;
use common::config::{FromLayers, Layers};
use common::queue::rabbit::{LockError, ProducerLock, RabbitBroker};
use common::queue::{AmqpConfig, Topology};
use common::telemetry::Stage;
use common::time::{format_beijing, now_beijing};
use common::worker::{self, WorkerArgs};
use jst::{CountQuery, JstClient, JstConfig};
use kingdee::{KingdeeClient, KingdeeConfig};
use producer::ProducerConfig;

use crate::preflight;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Run the base-data preflight instead: every organisation, stock, department, material
    /// and unit the configuration and the recent Jushuitan documents would book, checked in
    /// Kingdee (read-only). Exit 0 when nothing is wrong, 1 when something is, 2 when it
    /// could not ask.
    #[arg(long)]
    mapping: bool,
    /// With --mapping: days of Jushuitan count documents to read.
    #[arg(long, default_value_t = 7, requires = "mapping",
        value_parser = clap::value_parser!(u32).range(1..=366))]
    days: u32,
    /// With --mapping: text (one line per problem) or json.
    #[arg(long, value_enum, default_value = "text", requires = "mapping")]
    format: preflight::Format,
    /// With --mapping: also print a [mapping.units] block built from Kingdee's units.
    #[arg(long, requires = "mapping")]
    write_units: bool,
}

fn line(what: &str, result: Result<String, String>) -> bool {
    match result {
        Ok(detail) => {
            println!(
                "{what}: ok{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            );
            true
        }
        Err(e) => {
            println!("{what}: FAIL {e}");
            false
        }
    }
}

/// Whether a stage's configuration `C` can be taken out of the layers and passes its checks.
fn loads<C: FromLayers>(layers: &Layers) -> Result<String, String> {
    C::from_layers(layers)
        .map(|_| String::new())
        .map_err(|e| e.to_string())
}

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let (process, layers) = worker::load_config(&args.worker)?;
    crate::progress::init_logging(process.runtime.log_format, "error,lapin::channel=off");
    if args.mapping {
        let ask = preflight::Preflight {
            days: args.days,
            format: args.format,
            write_units: args.write_units,
        };
        return if preflight::run(&layers, &ask).await? {
            Ok(())
        } else {
            anyhow::bail!("the mapping has problems (see above)")
        };
    }
    // Without a readable [amqp] nothing below can be checked: a configuration error (exit 2).
    let amqp: AmqpConfig = layers.section()?;
    let mut ok = true;
    for (stage, result) in [
        (Stage::Producer, loads::<producer::Config>(&layers)),
        (Stage::Transformer, loads::<transformer::Config>(&layers)),
        (Stage::Loader, loads::<loader::Config>(&layers)),
    ] {
        ok &= line(&format!("config for the {}", stage.as_str()), result);
    }
    // The services whose sections are readable are checked; the others were reported above.
    let jst = layers.section::<JstConfig>().ok();
    let polling = layers.section::<ProducerConfig>().ok();
    let kingdee = layers.section::<KingdeeConfig>().ok();

    let topology = Topology::from_config(&amqp);
    let rabbit = tokio::time::timeout(
        Duration::from_secs(15),
        RabbitBroker::connect_once(
            amqp.url.clone(),
            "jst2kd-check",
            topology.clone(),
            CancellationToken::new(),
        ),
    )
    .await;
    let rabbit_result = match rabbit {
        Ok(Ok(broker)) => {
            broker.close().await;
            Ok(format!("topology of prefix {} declared", topology.prefix))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 15 s".into()),
    };
    ok &= line("rabbitmq", rabbit_result);

    // The account's quota is shared by every caller: while a producer holds the lock, it is
    // the producer's, and its /readyz already says whether Jushuitan answers. Otherwise the
    // check holds the lock for its one call, so a producer starting meanwhile waits.
    let lock = match tokio::time::timeout(
        Duration::from_secs(10),
        ProducerLock::acquire(
            &amqp.url,
            &format!("jst2kd-check-lock-{}", std::process::id()),
            &topology,
        ),
    )
    .await
    {
        Ok(Ok(lock)) => Some(Ok(lock)),
        Ok(Err(LockError::Held)) => Some(Err(())),
        // RabbitMQ unreachable (reported above): the call is made all the same.
        Ok(Err(LockError::Unavailable(_))) | Err(_) => None,
    };
    if matches!(lock, Some(Err(()))) {
        println!(
            "jushuitan: skipped (a producer is running and holds the account's quota; its /readyz reports Jushuitan)"
        );
    } else if let (Some(jst), Some(polling)) = (&jst, &polling)
        && !jst.app_key.is_empty()
    {
        let result = async {
            let client = JstClient::new(jst, None)
                .and_then(|c| c.with_token_file(jst::token_file_for(&polling.checkpoint)))
                .map(JstClient::without_refresh)
                .map_err(|e| e.to_string())?;
            let now = now_beijing();
            let query = CountQuery {
                modified_begin: format_beijing(&(now - chrono::Duration::minutes(5))),
                modified_end: format_beijing(&now),
                status: polling.statuses.first().cloned(),
            };
            client
                .count_page(&query, 1)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("count query answered at {}", jst.base_url))
        }
        .await;
        ok &= line("jushuitan", result);
    } else if jst.is_some() && polling.is_some() {
        println!("jushuitan: skipped (jst.app_key not set)");
    } else {
        ok &= line(
            "jushuitan",
            Err("not checked: [jst] or [producer] is invalid".into()),
        );
    }

    if let Some(Ok(lock)) = lock {
        lock.release().await;
    }

    match &kingdee {
        None => {
            ok &= line("kingdee", Err("not checked: [kingdee] is invalid".into()));
        }
        Some(k) if k.base_url.is_empty() => {
            println!("kingdee: skipped (kingdee.base_url not set)");
        }
        Some(kingdee) => {
            let result = async {
                let client = KingdeeClient::new(kingdee, 1, None).map_err(|e| e.to_string())?;
                client
                    .execute_bill_query("STK_MisDelivery", "FID", "FID=0")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!("bill query answered at {}", kingdee.base_url))
            }
            .await;
            ok &= line("kingdee", result);
        }
    }
    if ok {
        Ok(())
    } else {
        anyhow::bail!("some checks failed")
    }
}
