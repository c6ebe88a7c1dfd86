//! `jst2kd bench` end to end: the ceiling, the pipeline of real worker processes and the
//! backlog phase on the local RabbitMQ, its JSON report, and nothing left on the broker.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use e2e::run_jst2kd;
use serde_json::Value;

#[tokio::test]
async fn the_bench_measures_the_ceiling_the_pipeline_and_each_worker_alone() {
    let out = run_jst2kd(
        &[
            "bench",
            "--documents",
            "300",
            "--backlog",
            "400",
            "--format",
            "json",
        ],
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["schema"], "jst2kd.bench.v1");
    let prefix = report["prefix"].as_str().unwrap().to_string();
    assert!(prefix.starts_with("jst2kd-bench-"), "{prefix}");

    let ceiling = &report["ceiling"];
    assert_eq!(ceiling["messages"], 300);
    assert!(ceiling["messages_per_second"].as_f64().unwrap() > 0.0);

    let pipeline = &report["pipeline"];
    assert_eq!(pipeline["documents"], 300);
    assert!(
        pipeline["bills"].as_u64().unwrap() >= 300,
        "each document becomes bills"
    );
    assert_eq!(pipeline["dead_letters"], 0);
    let ratio = pipeline["of_ceiling"].as_f64().unwrap();
    let rates = pipeline["documents_per_second"].as_f64().unwrap()
        / ceiling["messages_per_second"].as_f64().unwrap();
    assert!((ratio - rates).abs() < 1e-9, "{ratio} vs {rates}");
    let costs = pipeline["costs"].as_array().unwrap();
    let names: Vec<&str> = costs
        .iter()
        .map(|c| c["process"].as_str().unwrap())
        .collect();
    for name in [
        "producer",
        "transformer",
        "loader",
        "sim jst",
        "sim kingdee",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    for cost in costs {
        let cpu = cost["cpu_seconds"].as_f64().unwrap();
        let per_1000 = cost["cpu_seconds_per_1000_documents"].as_f64().unwrap();
        assert!(
            cpu >= 0.0 && (per_1000 - cpu * 1000.0 / 300.0).abs() < 1e-6,
            "{cost}"
        );
        if ["producer", "transformer", "loader"].contains(&cost["process"].as_str().unwrap()) {
            assert!(cost["peak_rss_mib"].as_f64().unwrap() > 1.0, "{cost}");
            assert!(cpu > 0.0, "a worker that worked used CPU: {cost}");
        }
    }

    let stages = report["backlog"].as_array().unwrap();
    let workers: Vec<&str> = stages
        .iter()
        .map(|s| s["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers, ["producer", "transformer", "loader"]);
    assert_eq!(stages[0]["waiting"], 400);
    assert_eq!(stages[1]["waiting"], 400);
    assert!(stages[2]["waiting"].as_u64().unwrap() >= 400);
    for stage in stages {
        assert!(stage["peak_rss_mib"].as_f64().unwrap() > 1.0, "{stage}");
        assert!(stage["per_second"].as_f64().unwrap() > 0.0, "{stage}");
    }

    // Its queues are gone: the ceiling's and both phases' topologies.
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name"])
        .output()
        .expect("rabbitmqctl");
    let left: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|q| q.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn the_bench_refuses_nonsense_with_a_usage_error() {
    let out = run_jst2kd(&["bench", "--documents", "0"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run_jst2kd(&["bench", "--amqp", "http://nope"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--amqp"));
}
