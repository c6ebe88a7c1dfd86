#!/usr/bin/env python3
"""Writes the permissions of `jst2kd permissions --format json` (the default prefix, vhost /)
into the two files that create the pipeline's RabbitMQ users:

- deploy/rabbitmq/definitions.json (docker compose): the users' password hashes are kept;
- deploy/k8s-rabbitmq/component/users.yaml (the Messaging Topology Operator).

Run it after changing what a worker declares, publishes or reads:
    cargo build --bins && python3 deploy/rabbitmq/sync-permissions.py
tests/tests/deploy.rs fails while either file differs from what the binary prints.
"""
import json
import pathlib
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parents[2]
binary = root / "target" / "debug" / "jst2kd"
printed = json.loads(
    subprocess.check_output([str(binary), "permissions", "--format", "json"], text=True)
)

definitions_path = root / "deploy" / "rabbitmq" / "definitions.json"
definitions = json.loads(definitions_path.read_text())
users = {u["name"] for u in definitions["users"]}
missing = [p["user"] for p in printed if p["user"] not in users]
if missing:
    sys.exit(f"definitions.json has no user {missing}: add it with a password_hash first")
admin = [p for p in definitions["permissions"] if p["user"] == "jst2kd"]
definitions["permissions"] = admin + printed
definitions_path.write_text(json.dumps(definitions, indent=2) + "\n")

HEADER = """\
# One RabbitMQ user per worker and a read-only one for KEDA, made by the Messaging Topology
# Operator. It generates each User's name and password into the secret
# <User>-user-credentials (keys username, password), which the worker's Deployment reads (see
# kustomization.yaml); no credentials are imported (since v1.20 the Operator's webhook refuses
# an import secret without its label, and an imported user gets no such secret). The
# permissions are what `jst2kd permissions` prints for the prefix jst2kd (README "RabbitMQ
# users"), written here by deploy/rabbitmq/sync-permissions.py; jst2kd-ops is left out: the
# operations commands run where you choose.
"""
TEMPLATE = """\
apiVersion: rabbitmq.com/v1beta1
kind: User
metadata:
  name: {user}
spec:
  rabbitmqClusterReference: {{name: jst2kd-rabbitmq}}
---
apiVersion: rabbitmq.com/v1beta1
kind: Permission
metadata:
  name: {user}
spec:
  vhost: "/"
  userReference: {{name: {user}}}
  rabbitmqClusterReference: {{name: jst2kd-rabbitmq}}
  permissions:
    configure: '{configure}'
    write: '{write}'
    read: '{read}'
"""
blocks = [TEMPLATE.format(**p) for p in printed if p["user"] != "jst2kd-ops"]
users_path = root / "deploy" / "k8s-rabbitmq" / "component" / "users.yaml"
users_path.write_text(HEADER + "---\n".join(blocks))
print(f"wrote {definitions_path.relative_to(root)} and {users_path.relative_to(root)}")
