#!/usr/bin/env bash
# The README's quick start, checked the way a new user meets it (`./dev clone-check`, run by CI):
# clone the committed HEAD into a temp dir, `./dev run` there, send the README's curl, and wait
# for the signed answer at the receiver (`GET /received` of the receiver stand-in lists only
# deliveries whose signature it verified; `.run/receiver.log` must show it too). Then stop
# `./dev run`, check that nothing it started still runs, and remove its queues and keys.
#
# The clone runs on free ports and its own queue/key prefix (DEV_* variables of ./dev), so it
# collides with no other `./dev run` or test. It builds into $CARGO_TARGET_DIR (default: this
# checkout's target/), so only the workspace crates are compiled again, not the dependencies.
# Uncommitted changes are not part of the check: it is HEAD that a new user would clone (an
# argument names another commit, e.g. to see the check fail on an older one).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
t0=$(date +%s)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
work=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-clone-check.XXXXXX")
prefix="clonecheck-$t0-$$"
run_pid=""
pids=()

say() { echo "clone-check: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

chosen=()
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    port_open "$p" && continue
    [[ " ${chosen[*]} " == *" $p "* ]] && continue
    chosen+=("$p")
    echo "$p"
    return
  done
}

remove_queues_and_keys() {
  local queues
  queues=$(timeout 60 rabbitmqctl -q list_queues --no-table-headers name 2>/dev/null |
    grep "^$prefix\." || true)
  if [ -n "$queues" ]; then
    echo "$queues" | xargs -P 4 -I{} timeout 60 rabbitmqctl -q delete_queue {} >/dev/null 2>&1 || true
  fi
  redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$prefix:*" |
    xargs -r redis-cli -h 127.0.0.1 -p 6379 del >/dev/null || true
}

finish() {
  local rc=$?
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
    kill -TERM "$run_pid" 2>/dev/null || true
    for _ in $(seq 1 120); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$run_pid" 2>/dev/null || true
  fi
  local pid
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  remove_queues_and_keys
  if [ $rc -ne 0 ] && [ -f "$work/run.log" ]; then
    say "FAILED; the end of ./dev run's output:"
    tail -n 40 "$work/run.log" | sed 's/^/    /' >&2
  fi
  rm -rf "$work"
  exit $rc
}
trap finish EXIT

fail() {
  say "FAILED: $*"
  exit 1
}

commit=$(git rev-parse --verify "${1:-HEAD}^{commit}")
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  say "note: uncommitted changes are not checked; the clone is ${1:-HEAD} (${commit:0:7})"
fi
git clone -q --no-checkout "$repo" "$work/switchboard"
git -C "$work/switchboard" checkout -q --detach "$commit"
clone=$work/switchboard

ingress=$(free_port)
dify=$(free_port)
receiver=$(free_port)
worker_admin=$(free_port)
dispatcher_admin=$(free_port)
admin=$(free_port)
say "cloned ${commit:0:7} into $clone; ./dev run on ingress :$ingress, dify :$dify, receiver :$receiver"
(
  cd "$clone"
  exec env -u DIFY_API_KEY -u DIFY_BASE_URL \
    DEV_INGRESS_PORT="$ingress" DEV_DIFY_PORT="$dify" DEV_RECEIVER_PORT="$receiver" \
    DEV_WORKER_ADMIN_PORT="$worker_admin" DEV_DISPATCHER_ADMIN_PORT="$dispatcher_admin" \
    DEV_ADMIN_PORT="$admin" \
    DEV_PREFIX="$prefix" ./dev run
) </dev/null >"$work/run.log" 2>&1 &
run_pid=$!

# It builds first: allow for a cold build of the workspace crates.
deadline=$(($(date +%s) + 1500))
until grep -q "Switchboard is running" "$work/run.log" 2>/dev/null; do
  kill -0 "$run_pid" 2>/dev/null || fail "./dev run exited before it was ready"
  [ "$(date +%s)" -lt "$deadline" ] || fail "./dev run was not ready within 25 minutes"
  sleep 1
done
read -r -a pids <"$clone/.run/pids" || fail "./dev run recorded no pids in .run/pids"
ready=$(date +%s)
say "./dev run ready after $((ready - t0)) s (pids ${pids[*]})"
# Every program it runs was built by this ./dev run, from the clone (not left in the target
# dir by an earlier build): a fresh clone has no other.
for pid in "${pids[@]}"; do
  exe=$(readlink "/proc/$pid/exe") || fail "pid $pid, started by ./dev run, is not running"
  [ "$(stat -c %Y "$exe")" -ge "$t0" ] || fail "$exe was not built by this ./dev run"
done

# The README's curl, as printed there, with the clone's ingress port.
curl_cmd=$(sed -n '/^curl -i -X POST http:\/\/127.0.0.1:8080\/hooks\/demo/,/-d /p' "$clone/README.md")
[ -n "$curl_cmd" ] || fail "no 'curl -i -X POST http://127.0.0.1:8080/hooks/demo' in README.md"
curl_cmd=${curl_cmd//127.0.0.1:8080/127.0.0.1:$ingress}
status=$(bash -c "$curl_cmd" 2>/dev/null | head -n 1 | tr -d '\r')
[[ $status == HTTP/*" 202"* ]] || fail "the README's curl got '$status', not 202"
say "the README's curl: $status"

deadline=$(($(date +%s) + 60))
until curl -fs "http://127.0.0.1:$receiver/received" | grep -q '"query":"Hello, Switchboard"'; do
  kill -0 "$run_pid" 2>/dev/null || fail "./dev run exited before the answer arrived"
  [ "$(date +%s)" -lt "$deadline" ] || fail "no signed answer at the receiver within 60 s"
  sleep 0.5
done
grep -q "Hello, Switchboard" "$clone/.run/receiver.log" ||
  fail "the answer is not in .run/receiver.log, where the README says to look"
say "the signed answer arrived at the receiver $(($(date +%s) - ready)) s after the curl"

kill -TERM "$run_pid"
for _ in $(seq 1 120); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.5; done
kill -0 "$run_pid" 2>/dev/null && fail "./dev run did not stop within 60 s of SIGTERM"
for pid in "${pids[@]}"; do
  kill -0 "$pid" 2>/dev/null && fail "pid $pid, started by ./dev run, still runs after it stopped"
done
for p in "$ingress" "$dify" "$receiver" "$worker_admin" "$dispatcher_admin"; do
  port_open "$p" && fail "port $p is still listening after ./dev run stopped"
done
say "stopped; nothing it started still runs. Total $(($(date +%s) - t0)) s"
