#!/usr/bin/env bash
# A RabbitMQ cluster of its own on this machine, beside the usual broker: separate node names,
# ports and data directories, the machine's Erlang cookie.
#
#   cluster.sh start DIR NAME N     start N nodes NAME-1@localhost … (AMQP ports printed, one a line)
#   cluster.sh kill DIR NAME I      SIGKILL node I (no goodbye to its peers)
#   cluster.sh stop DIR NAME N      stop every node still running and delete DIR
#   cluster.sh tls DIR NAME CERTS   start one node NAME-1@localhost whose only listener is TLS,
#                                   asking every client for a certificate (CERTS holds ca.pem,
#                                   server.pem, server.key); its port printed; stop it as N=1
#
# Used by tests/tests/cluster.rs; runnable by hand to try a failover.
set -euo pipefail
cmd=$1 dir=$2 name=$3 n=$4

ctl() { rabbitmqctl -q -n "$1" "${@:2}"; }

# Nothing inherited may point a node at the usual broker's name or data.
for v in $(env | grep -o '^RABBITMQ_[A-Z_]*' || true); do unset "$v"; done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

node_conf() { # node index, AMQP port, extra rabbitmq.conf lines
  local i=$1 port=$2 extra=$3 base="$dir/n$1" dist
  mkdir -p "$base"
  dist=$(free_port)
  cat > "$base/rabbitmq-env.conf" <<ENV
NODENAME=$name-$i@localhost
NODE_PORT=$port
DIST_PORT=$dist
MNESIA_BASE=$base/mnesia
LOG_BASE=$base/log
PID_FILE=$base/pid
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
CONFIG_FILE=$base/rabbitmq.conf
ADVANCED_CONFIG_FILE=$base/advanced.config
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
ENV
  printf '%s\n' "$extra" > "$base/rabbitmq.conf"
  echo "$port" > "$base/port"
}

await_node() { # node index; await_startup fails at once while the node has not registered
  local up=no
  for _ in $(seq 240); do
    if ctl "$name-$1@localhost" await_startup --timeout 60 >/dev/null 2>&1; then up=yes; break; fi
    sleep 0.5
  done
  [ "$up" = yes ] || { echo "node $name-$1 did not start; its log:" >&2; cat "$dir/n$1"/log/*.log >&2 || true; exit 1; }
}

prepare() { # the directory, with no plugin enabled (the management plugin's port is the usual broker's)
  mkdir -p "$dir"
  echo "[]." > "$dir/enabled_plugins"
}

launch() { # node indexes: hand the files to the rabbitmq user, start the nodes, wait for each
  # The nodes run as the rabbitmq user (the Debian wrapper switches to it).
  chown -R rabbitmq:rabbitmq "$dir" || { echo "cannot give $dir to the rabbitmq user (run as root)" >&2; exit 1; }
  for i in "$@"; do RABBITMQ_CONF_ENV_FILE="$dir/n$i/rabbitmq-env.conf" rabbitmq-server -detached; done
  for i in "$@"; do await_node "$i"; done
}

case "$cmd" in
tls)
  certs=$4
  prepare
  port=$(free_port)
  mkdir -p "$dir/n1"
  cp "$certs/ca.pem" "$certs/server.pem" "$certs/server.key" "$dir/n1/"
  node_conf 1 "$port" "listeners.tcp = none
listeners.ssl.default = 127.0.0.1:$port
ssl_options.cacertfile = $dir/n1/ca.pem
ssl_options.certfile = $dir/n1/server.pem
ssl_options.keyfile = $dir/n1/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
loopback_users.guest = true"
  launch 1
  echo "$port"
  ;;
start)
  prepare
  for i in $(seq 1 "$n"); do
    port=$(free_port)
    node_conf "$i" "$port" "listeners.tcp.local = 127.0.0.1:$port
loopback_users.guest = true"
  done
  launch $(seq 1 "$n")
  for i in $(seq 2 "$n"); do
    node="$name-$i@localhost"
    ctl "$node" stop_app >/dev/null
    ctl "$node" join_cluster "$name-1@localhost" >/dev/null
    ctl "$node" start_app >/dev/null
  done
  for i in $(seq 1 "$n"); do cat "$dir/n$i/port"; done
  ;;
kill)
  pid=$(cat "$dir/n$n/pid")
  kill -KILL "$pid"
  ;;
stop)
  for i in $(seq 1 "$n"); do
    ctl "$name-$i@localhost" stop >/dev/null 2>&1 || true
    # A node that would not stop is killed before its data goes.
    if [ -f "$dir/n$i/pid" ]; then kill -KILL "$(cat "$dir/n$i/pid")" 2>/dev/null || true; fi
  done
  rm -rf "$dir"
  ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
