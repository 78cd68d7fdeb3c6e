#!/usr/bin/env bash
# `./dev deploy-check`: the offline checks of deploy/kubernetes and deploy/monitoring
# (deploy_check.py says what they are). Its tools are kept under target/deploy-check/: a Python
# venv with pinned kubernetes-validate (bundled Kubernetes schemas), cloudcoil-models-keda (KEDA's
# CRD schemas), jsonschema and PyYAML, and promtool taken out of Debian's `prometheus` package
# (downloaded, not installed: no service is started).
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS=target/deploy-check
VENV=$TOOLS/venv
REQS="kubernetes-validate==1.37.0 cloudcoil-models-keda==2.16.1.0 jsonschema==4.26.0 PyYAML==6.0.4"
mkdir -p "$TOOLS"
if [ ! -f "$VENV/.installed" ] || [ "$(cat "$VENV/.installed")" != "$REQS" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $REQS
  echo "$REQS" >"$VENV/.installed"
fi
PROMTOOL=$TOOLS/promtool
if [ ! -x "$PROMTOOL" ]; then
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update >/dev/null
    (cd "$tmp" && apt-get download prometheus >/dev/null)
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  cp "$tmp/x/usr/bin/promtool" "$PROMTOOL"
  rm -rf "$tmp"
fi
"$VENV/bin/python" deploy/checks/deploy_check.py --promtool "$PROMTOOL" --self-test
# The ConfigMap's config is a valid Switchboard config (its `env:` secrets given stand-in values
# for the check only).
env SWITCHBOARD_AMQP_URL_1=amqp://check:check@node1:5672/%2f \
  SWITCHBOARD_AMQP_URL_2=amqp://check:check@node2:5672/%2f \
  SWITCHBOARD_AMQP_URL_3=amqp://check:check@node3:5672/%2f \
  SWITCHBOARD_REDIS_URL=redis://:check@redis:6379/0 DIFY_API_KEY=app-check \
  SWITCHBOARD_ENCRYPTION_KEY=check-check-check-check-check-check-check \
  CRM_WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \
  CRM_ANSWER_SECRET=whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD \
  cargo run -q --bin switchboard -- --config deploy/kubernetes/base/switchboard.toml config check
