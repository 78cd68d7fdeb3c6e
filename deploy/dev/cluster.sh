#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this one machine, for trying Switchboard against a cluster and for
# tests: `./dev cluster up|down|status` (this script is what `./dev cluster` runs).
#
#   node sb-cluster-1@localhost  AMQP 127.0.0.1:5681  distribution 25681
#   node sb-cluster-2@localhost  AMQP 127.0.0.1:5682  distribution 25682
#   node sb-cluster-3@localhost  AMQP 127.0.0.1:5683  distribution 25683
#
# Each node has its own directory under .run/cluster/ (config, Mnesia, logs, pid files) and all
# share one Erlang cookie (.run/cluster/cookie). The nodes form the cluster by themselves through
# classic-config peer discovery: node 1 boots first, nodes 2 and 3 join it. The machine's own
# broker on 5672 is not touched. `down` stops exactly the processes this script started, by the
# pids it recorded (never by a name pattern).
#
# Use it from Switchboard with:
#   [broker]
#   url = ["amqp://guest:guest@127.0.0.1:5681/%2f", "amqp://guest:guest@127.0.0.1:5682/%2f",
#          "amqp://guest:guest@127.0.0.1:5683/%2f"]
# (`guest` may log in over loopback only, which is where these nodes listen.)
set -euo pipefail
cd "$(dirname "$0")/../.."

ROOT=${SB_CLUSTER_DIR:-$PWD/.run/cluster}
NODES=(1 2 3)
SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
CTL=/usr/lib/rabbitmq/bin/rabbitmqctl
[ -x "$SERVER" ] || SERVER=$(command -v rabbitmq-server)
[ -x "$CTL" ] || CTL=$(command -v rabbitmqctl)

node_name() { echo "sb-cluster-$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The real server script with nothing of the machine's RABBITMQ_*/ERL_* settings: the Debian
# wrapper in /usr/sbin would switch to the rabbitmq user, whose HOME holds another cookie.
node_env() {
  local n=$1 dir=$ROOT/node$1
  echo env -i PATH="$PATH" HOME="$dir" LANG="${LANG:-C.UTF-8}" \
    RABBITMQ_NODENAME="$(node_name "$n")" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/logs" \
    RABBITMQ_PID_FILE="$dir/beam.pid" ERL_EPMD_ADDRESS=127.0.0.1
}

# rabbitmqctl for node N: the CLI reads the cookie from $HOME, the node's directory.
ctl() {
  local n=$1
  shift
  env -i PATH="$PATH" HOME="$ROOT/node$n" LANG="${LANG:-C.UTF-8}" ERL_EPMD_ADDRESS=127.0.0.1 \
    timeout 60 "$CTL" -q -n "$(node_name "$n")" "$@"
}

prepare() {
  local n=$1 dir=$ROOT/node$1
  mkdir -p "$dir/logs"
  echo "[]." >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf"
  {
    echo "loopback_users.guest = true"
    echo "cluster_formation.peer_discovery_backend = classic_config"
    for m in "${NODES[@]}"; do
      echo "cluster_formation.classic_config.nodes.$m = $(node_name "$m")"
    done
  } >"$dir/rabbitmq.conf"
  install -m 0400 "$ROOT/cookie" "$dir/.erlang.cookie"
}

start_node() {
  local n=$1 dir=$ROOT/node$1
  if [ -f "$dir/script.pid" ] && kill -0 "$(cat "$dir/script.pid")" 2>/dev/null; then
    echo "cluster: node $n is already running" >&2
    return 0
  fi
  if port_open "$(amqp_port "$n")"; then
    echo "cluster: 127.0.0.1:$(amqp_port "$n") is taken by something else" >&2
    exit 1
  fi
  prepare "$n"
  # shellcheck disable=SC2046
  setsid $(node_env "$n") "$SERVER" >>"$dir/logs/server.out" 2>&1 </dev/null &
  echo $! >"$dir/script.pid"
}

wait_node() {
  local n=$1
  for _ in $(seq 1 180); do
    port_open "$(amqp_port "$n")" && return 0
    kill -0 "$(cat "$ROOT/node$n/script.pid")" 2>/dev/null || {
      echo "cluster: node $n exited during boot; see $ROOT/node$n/logs" >&2
      exit 1
    }
    sleep 0.5
  done
  echo "cluster: node $n did not take AMQP within 90 s; see $ROOT/node$n/logs" >&2
  exit 1
}

running_nodes() {
  ctl 1 eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || echo 0
}

up() {
  mkdir -p "$ROOT"
  [ -f "$ROOT/cookie" ] || { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ROOT/cookie"; }
  chmod 0400 "$ROOT/cookie"
  start_node 1
  wait_node 1
  start_node 2
  start_node 3
  wait_node 2
  wait_node 3
  for _ in $(seq 1 60); do
    [ "$(running_nodes)" = 3 ] && break
    sleep 1
  done
  if [ "$(running_nodes)" != 3 ]; then
    echo "cluster: the nodes did not form one cluster; see $ROOT/node*/logs" >&2
    exit 1
  fi
  echo "cluster: 3 nodes running as one cluster:" >&2
  for n in "${NODES[@]}"; do
    echo "  $(node_name "$n")  amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f" >&2
  done
}

stop_node() {
  local n=$1 dir=$ROOT/node$1
  [ -f "$dir/script.pid" ] || return 0
  local script beam
  script=$(cat "$dir/script.pid")
  beam=$(cat "$dir/beam.pid" 2>/dev/null || true)
  # SIGTERM to the server script stops the node gracefully.
  kill -TERM "$script" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$script" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$script" 2>/dev/null; then
    [ -n "$beam" ] && kill -KILL "$beam" 2>/dev/null || true
    kill -KILL "$script" 2>/dev/null || true
  fi
  rm -f "$dir/script.pid" "$dir/beam.pid"
}

down() {
  # The last node to stop is the first that must start again: stop 3, 2, then 1.
  for n in 3 2 1; do stop_node "$n"; done
  if [ "${1:-}" = "--purge" ]; then
    rm -rf "$ROOT"
  fi
  echo "cluster: stopped" >&2
}

status() {
  for n in "${NODES[@]}"; do
    if port_open "$(amqp_port "$n")"; then
      echo "node $n ($(node_name "$n")): up on 127.0.0.1:$(amqp_port "$n")"
    else
      echo "node $n ($(node_name "$n")): down"
    fi
  done
  port_open "$(amqp_port 1)" && echo "running nodes in the cluster: $(running_nodes)"
  return 0
}

case "${1:-}" in
  up) up ;;
  down) shift; down "$@" ;;
  status) status ;;
  ctl) shift; n=$1; shift; ctl "$n" "$@" ;;
  *) echo "usage: $0 up | down [--purge] | status | ctl N <rabbitmqctl args>" >&2; exit 2 ;;
esac
