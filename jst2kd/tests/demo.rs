#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The newcomer's first command: `jst2kd demo` with no broker reachable.

use std::process::Command;

fn figure(out: &str, label: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(label).and_then(|r| r.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{out}"))
}

#[test]
fn the_demo_runs_without_a_broker_and_its_figures_add_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_jst2kd"))
        .args(["demo", "--documents", "300", "--seed", "3"])
        .env("JST2KD_AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let fetched = figure(&stdout, "documents fetched (statuses Confirmed, Archive):");
    let published = figure(&stdout, "bills published:");
    let created = figure(&stdout, "bills created:");
    let no_lines = figure(&stdout, "skipped (no loss lines):");
    let dead = figure(&stdout, "dead-lettered:");
    assert!(created > 0);
    assert_eq!(
        fetched,
        published + no_lines + dead,
        "every fetched document is accounted for"
    );
    assert_eq!(created, figure(&stdout, "bills in the Kingdee simulator:"));
    assert_eq!(created, published);
}
