#!/usr/bin/env python3
"""Checks the rendering of deploy/k8s-rabbitmq (`kubectl kustomize deploy/k8s-rabbitmq`, read
from the file given): a three-node RabbitmqCluster with TLS and the Prometheus plugin, a User
and a Permission per worker and for KEDA, each worker connecting over amqps:// as its own
user and trusting the cluster's CA, KEDA as jst2kd-keda over TLS, and no worker left reading
a URL of the base's Secret. .ci/run runs it."""
import sys

import yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
problems = []


def of(kind):
    return [d for d in docs if d["kind"] == kind]


for d in docs:
    if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "jst2kd":
        problems.append(f"{d['kind']} {d['metadata']['name']} is not in the namespace jst2kd")

clusters = of("RabbitmqCluster")
if len(clusters) != 1:
    problems.append(f"{len(clusters)} RabbitmqCluster objects, not 1")
else:
    spec = clusters[0]["spec"]
    if spec.get("replicas") != 3:
        problems.append("the RabbitmqCluster does not have 3 replicas")
    if spec.get("tls", {}).get("secretName") != "jst2kd-rabbitmq-tls":
        problems.append("the RabbitmqCluster does not serve TLS from jst2kd-rabbitmq-tls")
    if "rabbitmq_prometheus" not in spec.get("rabbitmq", {}).get("additionalPlugins", []):
        problems.append("the RabbitmqCluster does not name the Prometheus plugin")

certificates = of("Certificate")
if [c["spec"]["secretName"] for c in certificates] != ["jst2kd-rabbitmq-tls"]:
    problems.append("no Certificate fills jst2kd-rabbitmq-tls")

users = sorted(u["metadata"]["name"] for u in of("User"))
wanted = ["jst2kd-keda", "jst2kd-loader", "jst2kd-producer", "jst2kd-transformer"]
if users != wanted:
    problems.append(f"Users {users}, not {wanted}")
granted = sorted(p["spec"]["userReference"]["name"] for p in of("Permission"))
if granted != wanted:
    problems.append(f"Permissions for {granted}, not {wanted}")

for deployment in of("Deployment"):
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    url = env.get("JST2KD_AMQP__URL", {}).get("value", "")
    if not url.startswith("amqps://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@jst2kd-rabbitmq."):
        problems.append(f"{name}: amqp.url is {url!r}")
    secret = env.get("RABBITMQ_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
    if secret.get("name") != f"jst2kd-{name}-user-credentials":
        problems.append(f"{name}: its password is not its own user's")
    if env.get("JST2KD_AMQP__URL_FILE", {}).get("value") != "":
        problems.append(f"{name}: amqp.url_file of the base is not taken back")
    if env.get("JST2KD_AMQP__CA_FILE", {}).get("value") != "/run/secrets/rabbitmq-ca/ca.crt":
        problems.append(f"{name}: amqp.ca_file is not the cluster's CA")
    for volume in pod["volumes"]:
        for item in volume.get("secret", {}).get("items", []):
            if item["key"].endswith("amqp-url"):
                problems.append(f"{name}: still mounts {item['key']}")

auth = of("TriggerAuthentication")
params = {r["parameter"]: r for a in auth for r in a["spec"]["secretTargetRef"]}
if params.get("username", {}).get("name") != "jst2kd-keda-user-credentials":
    problems.append("KEDA does not read the depths as jst2kd-keda")
if "tls" not in params or "ca" not in params:
    problems.append("KEDA does not use TLS with the cluster's CA")
for scaled in of("ScaledObject"):
    host = scaled["spec"]["triggers"][0]["metadata"].get("host", "")
    if not host.startswith("amqps://"):
        problems.append(f"ScaledObject {scaled['metadata']['name']}: host {host!r}")

if problems:
    sys.exit("deploy/k8s-rabbitmq:\n  " + "\n  ".join(problems))
print(f"deploy/k8s-rabbitmq: {len(docs)} objects; 3 nodes over TLS, "
      f"{len(users)} users, every worker as its own user")
