#!/usr/bin/env python3
"""Writes prometheusrule.yaml from deploy/prometheus/alerts.yml (the one source of the alert
rules), or with --check fails when the two differ (.ci/run)."""
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ALERTS = HERE.parents[1] / "prometheus" / "alerts.yml"
RULE = HERE / "prometheusrule.yaml"
HEAD = """# The alert rules of deploy/prometheus/alerts.yml for the Prometheus Operator, written by
# sync-rules.py from that file (edit alerts.yml, then run it); .ci/run fails when they differ.
"""


# The Prometheus Operator routes an AlertmanagerConfig's alerts by their namespace label; most
# of the rules aggregate it away, so every alert gets it here.
NAMESPACE = "jst2kd"


def wanted():
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.setdefault("labels", {})["namespace"] = NAMESPACE
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "jst2kd"},
        "spec": {"groups": groups},
    }


def main():
    doc = wanted()
    if "--check" in sys.argv[1:]:
        if yaml.safe_load(RULE.read_text()) != doc:
            sys.exit(f"{RULE} differs from {ALERTS}: run {__file__}")
        print(f"{RULE.name} matches alerts.yml")
        return
    RULE.write_text(HEAD + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100))
    print(f"wrote {RULE}")


main()
