//! `jst2kd check`: the configuration, then RabbitMQ, Jushuitan and Kingdee, one line each;
//! exit 1 when any fails. Sections a deployment does not use are reported as skipped.

use std::time::Duration;

use clap::Args;
use common::queue::Topology;
use common::queue::rabbit::RabbitBroker;
use common::telemetry::Stage;
use common::time::{format_beijing, now_beijing};
use common::worker::{self, WorkerArgs};
use jst::{CountQuery, JstClient};
use kingdee::KingdeeClient;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    worker: WorkerArgs,
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

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let config = worker::load_config(&args.worker, None)?;
    common::telemetry::init_logging_with(config.runtime.log_format, "error");
    let mut ok = true;
    for stage in [Stage::Producer, Stage::Transformer, Stage::Loader] {
        ok &= line(
            &format!("config for the {}", stage.as_str()),
            config
                .validate(stage)
                .map(|()| String::new())
                .map_err(|e| e.to_string()),
        );
    }

    let topology = Topology::from_config(&config.amqp);
    let rabbit = tokio::time::timeout(
        Duration::from_secs(15),
        RabbitBroker::connect(
            config.amqp.url.clone(),
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

    if config.jst.app_key.is_empty() {
        println!("jushuitan: skipped (jst.app_key not set)");
    } else {
        let result = async {
            let client = JstClient::new(&config.jst, None)
                .and_then(|c| c.with_token_file(jst::token_file_for(&config.producer.checkpoint)))
                .map(JstClient::without_refresh)
                .map_err(|e| e.to_string())?;
            let now = now_beijing();
            let query = CountQuery {
                modified_begin: format_beijing(&(now - chrono::Duration::minutes(5))),
                modified_end: format_beijing(&now),
                status: config.producer.statuses.first().cloned(),
            };
            client
                .count_page(&query, 1)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("count query answered at {}", config.jst.base_url))
        }
        .await;
        ok &= line("jushuitan", result);
    }

    if config.kingdee.base_url.is_empty() {
        println!("kingdee: skipped (kingdee.base_url not set)");
    } else {
        let result = async {
            let client = KingdeeClient::new(&config.kingdee, 1, None).map_err(|e| e.to_string())?;
            client
                .execute_bill_query("STK_MisDelivery", "FID", "FID=0")
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "bill query answered at {}",
                config.kingdee.base_url
            ))
        }
        .await;
        ok &= line("kingdee", result);
    }
    if ok {
        Ok(())
    } else {
        anyhow::bail!("some checks failed")
    }
}
