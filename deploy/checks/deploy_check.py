"""Offline checks of deploy/kubernetes and deploy/monitoring (`./dev deploy-check`, run by CI).

What it checks, without a cluster or the network:
- Renders each kustomization (the base and every overlay) with the small subset of kustomize the
  manifests use; a kustomization key outside that subset fails the check rather than being
  ignored. `kubectl kustomize` renders the same files the same way.
- Core kinds against the Kubernetes OpenAPI schemas bundled in kubernetes-validate, strictly
  (unknown fields fail).
- KEDA's ScaledObject and TriggerAuthentication against the schemas of cloudcoil-models-keda
  (generated from KEDA's CRDs), made strict here; the RabbitmqCluster against
  rabbitmqcluster.schema.json beside this file (the fields the example uses, as the operator's
  CRD defines them; the CRD itself is not kept in the repository).
- What ties the manifests to Switchboard: the ConfigMap's TOML names the queues the ScaledObjects
  watch; every role probes /readyz and /healthz on the port it listens on, and is scraped on its
  admin listener; the grace period
  covers preStop plus the role's shutdown grace; containers run as non-root on a read-only root
  filesystem with resource requests; every PodDisruptionBudget, HPA and ScaledObject points at a
  Deployment that exists.
- deploy/monitoring: every metric the alert rules and the dashboard use is one the code
  exports (`metrics::counter!/gauge!/histogram!` in the Rust sources, or a name a match arm
  chooses for one, as `ingress::keep` does per door); the rules pass
  `promtool check rules`, and so do the dashboard's queries, written into a rules file.

Usage: python deploy_check.py [--promtool PATH] [--self-test]
"""
import argparse
import copy
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import kubernetes_validate
import yaml
from cloudcoil.models.keda import v1alpha1 as keda

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
MONITORING = ROOT / "deploy" / "monitoring"
HERE = pathlib.Path(__file__).resolve().parent
K8S_VERSION = "1.32"
SUPPORTED_KEYS = {
    "apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator", "images",
    "patches",
}


class Problems(list):
    def add(self, where, what):
        self.append(f"{where}: {what}")


# --- rendering -------------------------------------------------------------------------------

def load_docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def json_pointer_parts(path):
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_json6902(doc, ops):
    for op in ops:
        *parents, last = json_pointer_parts(op["path"])
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if op["op"] in ("replace", "add"):
            if isinstance(node, list):
                idx = len(node) if last == "-" else int(last)
                if op["op"] == "add":
                    node.insert(idx, op["value"])
                else:
                    node[idx] = op["value"]
            else:
                if op["op"] == "replace" and last not in node:
                    raise ValueError(f"replace of a missing path {op['path']}")
                node[last] = op["value"]
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise ValueError(f"unsupported patch op {op['op']}")


def matches(doc, target):
    group, _, _ = doc["apiVersion"].rpartition("/")
    return all([
        target.get("kind", doc["kind"]) == doc["kind"],
        target.get("name", doc["metadata"]["name"]) == doc["metadata"]["name"],
        target.get("group", group) == group,
    ])


def set_image(doc, images):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        for img in images:
            if c["image"].split(":")[0] == img["name"]:
                c["image"] = f"{img.get('newName', img['name'])}:{img.get('newTag', 'latest')}"


def render(directory, problems):
    """The documents a kustomization directory renders to, and the ConfigMaps' file texts."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for key in set(k) - SUPPORTED_KEYS:
        problems.add(directory / "kustomization.yaml", f"`{key}` is not supported by this check")
    docs, files = [], {}
    for r in k.get("resources", []):
        path = (directory / r).resolve()
        if path.is_dir():
            sub_docs, sub_files = render(path, problems)
            docs += sub_docs
            files.update(sub_files)
        else:
            docs += load_docs(path)
    for gen in k.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            data[pathlib.Path(f).name] = (directory / f).read_text()
        files.update({(gen["name"], name): text for name, text in data.items()})
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": gen["name"]}, "data": data})
    for label in k.get("labels", []):
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(label["pairs"])
    for d in docs:
        set_image(d, k.get("images", []))
        if "namespace" in k and d["kind"] != "Namespace":
            d["metadata"]["namespace"] = k["namespace"]
    for p in k.get("patches", []):
        hit = [d for d in docs if matches(d, p.get("target", {}))]
        if not hit:
            problems.add(directory, f"patch target {p.get('target')} matches nothing")
        for d in hit:
            apply_json6902(d, yaml.safe_load(p["patch"]))
    return docs, files


# --- schemas ---------------------------------------------------------------------------------

def strict(schema):
    """A copy of a JSON schema where every object with declared properties allows no others."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): strict(keda.ScaledObject.model_json_schema()),
    ("keda.sh/v1alpha1", "TriggerAuthentication"):
        strict(keda.TriggerAuthentication.model_json_schema()),
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"):
        json.loads((HERE / "rabbitmqcluster.schema.json").read_text()),
}


def validate_doc(doc, where, problems):
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if key in SCHEMAS:
        # ObjectMeta is Kubernetes' own; the CRD schemas leave it open.
        body = {k: v for k, v in doc.items() if k != "metadata"}
        schema = copy.deepcopy(SCHEMAS[key])
        schema.get("properties", {}).pop("metadata", None)
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(body), key=str)
        for e in errors[:5]:
            problems.add(name, f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]},
            K8S_VERSION, strict=True)
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        problems.add(name, str(e).splitlines()[0][:300])
    except Exception as e:  # an apiVersion/kind without a schema
        problems.add(name, f"no schema to check it against ({e})")


# --- what ties the manifests to Switchboard ----------------------------------------------------

def duration_secs(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unexpected duration {text!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


ROLE_PORT = {"ingress": ("ingress", "listen", "0.0.0.0:8080"),
             "worker": ("worker", "admin_listen", "127.0.0.1:9091"),
             "dispatcher": ("dispatcher", "admin_listen", "127.0.0.1:9092")}
# Where each role serves /metrics: the admin listener (the ingress's public port has none).
ROLE_ADMIN = {"ingress": ("ingress", "admin_listen", "127.0.0.1:9090"),
              "worker": ("worker", "admin_listen", "127.0.0.1:9091"),
              "dispatcher": ("dispatcher", "admin_listen", "127.0.0.1:9092")}
ROLE_GRACE = {"ingress": ("ingress", "request_timeout", "10s"),
              "worker": ("worker", "shutdown_grace", "60s"),
              "dispatcher": ("dispatcher", "shutdown_grace", "30s")}


def cross_check(docs, files, where, problems):
    configs = [tomllib.loads(t) for (_, name), t in files.items() if name.endswith(".toml")]
    if len(configs) != 1:
        problems.add(where, f"expected one switchboard.toml in a ConfigMap, found {len(configs)}")
        return
    config = configs[0]
    prefix = config.get("broker", {}).get("prefix", "switchboard")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name, d in deployments.items():
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        role = c["args"][0]
        section, key, default = ROLE_PORT[role]
        listen = config.get(section, {}).get(key, default)
        port = int(listen.rsplit(":", 1)[1])
        if not listen.startswith("0.0.0.0:"):
            problems.add(name, f"{section}.{key} = {listen} is not reachable from the kubelet")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or ports.get(get.get("port"), get.get("port")) != port:
                problems.add(name, f"{probe} must GET {path} on port {port}")
        section, key, default = ROLE_ADMIN[role]
        admin = config.get(section, {}).get(key, default)
        annotations = d["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true" and (
                not admin.startswith("0.0.0.0:")
                or annotations.get("prometheus.io/port") != admin.rsplit(":", 1)[1]):
            problems.add(name, f"Prometheus must scrape {section}.{key} ({admin}), "
                               f"not port {annotations.get('prometheus.io/port')}")
        section, key, default = ROLE_GRACE[role]
        grace = duration_secs(config.get(section, {}).get(key, default))
        pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        if spec.get("terminationGracePeriodSeconds", 30) < pre + grace:
            problems.add(name, f"terminationGracePeriodSeconds is below preStop {pre}s + "
                               f"{section}.{key} {grace:g}s")
        sc = c.get("securityContext", {})
        if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                and spec.get("securityContext", {}).get("runAsNonRoot")):
            problems.add(name, "must run as non-root on a read-only root filesystem")
        if not c.get("resources", {}).get("requests"):
            problems.add(name, "has no resource requests")
    selectors = {n: d["spec"]["selector"]["matchLabels"] for n, d in deployments.items()}
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind == "PodDisruptionBudget":
            sel = d["spec"]["selector"]["matchLabels"]
            if not any(all(s.get(k) == v for k, v in sel.items()) for s in selectors.values()):
                problems.add(name, "the PodDisruptionBudget selects no Deployment")
        if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            if d["spec"]["scaleTargetRef"]["name"] not in deployments:
                problems.add(name, f"{kind} targets a Deployment that does not exist")
        if kind == "ScaledObject":
            target = deployments.get(d["spec"]["scaleTargetRef"]["name"])
            role = target["spec"]["template"]["spec"]["containers"][0]["args"][0] if target else ""
            stage = {"worker": "work", "dispatcher": "deliver"}.get(role)
            for t in d["spec"]["triggers"]:
                queue = t.get("metadata", {}).get("queueName")
                if t["type"] == "rabbitmq" and queue != f"{prefix}.{stage}":
                    problems.add(name, f"watches {queue}, but the {role} consumes {prefix}.{stage}")


# --- monitoring ------------------------------------------------------------------------------

def exported_metrics():
    names = set()
    pattern = re.compile(r'metrics::(?:counter|gauge|histogram)!\(\s*"([a-z0-9_]+)"')
    # A name chosen by a match arm and passed to the macro (`Door::Ingress => "switchboard_…"`).
    chosen = re.compile(r'=>\s*"(switchboard_[a-z0-9_]+)"')
    for path in ROOT.glob("**/src/**/*.rs"):
        if "target" in path.parts or ".run" in path.parts:
            continue
        text = path.read_text()
        names.update(pattern.findall(text))
        names.update(chosen.findall(text))
    return names


METRIC = re.compile(r"\b(switchboard_[a-z0-9_]+?)(?:_bucket|_sum|_count)?\b")


def dashboard_queries(dashboard):
    for panel in dashboard["panels"]:
        for sub in panel.get("panels", []) + [panel]:
            for t in sub.get("targets", []):
                yield sub.get("title", "?"), t["expr"]


def check_monitoring(promtool, problems):
    exported = exported_metrics()
    rules_path = MONITORING / "alerts.yaml"
    rules = yaml.safe_load(rules_path.read_text())
    exprs = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    queries = list(dashboard_queries(dashboard))
    for where, expr in exprs + queries:
        for m in METRIC.findall(expr):
            base = m
            if base not in exported and re.sub(r"_(bucket|sum|count)$", "", base) not in exported:
                problems.add(f"monitoring: {where}", f"{m} is not a metric the code exports")
    if not queries:
        problems.add("dashboard.json", "no queries")
    if promtool is None:
        return
    out = subprocess.run([promtool, "check", "rules", str(rules_path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        problems.add("alerts.yaml", f"promtool: {out.stdout}{out.stderr}".strip())
    # The dashboard's queries, with Grafana's variables set, as recording rules.
    record = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}",
         "expr": expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")}
        for i, (_, expr) in enumerate(queries)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(record, f)
    out = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    if out.returncode != 0:
        problems.add("dashboard.json", f"promtool on its queries: {out.stdout}{out.stderr}".strip())


# --- main ------------------------------------------------------------------------------------

def check_all(promtool):
    problems = Problems()
    dirs = [KUBE / "base"] + sorted(p for p in (KUBE / "overlays").iterdir() if p.is_dir())
    rendered = {}
    for d in dirs:
        docs, files = render(d, problems)
        rendered[d] = (docs, files)
        where = d.relative_to(ROOT)
        for doc in docs:
            validate_doc(doc, where, problems)
        cross_check(docs, files, where, problems)
    check_monitoring(promtool, problems)
    return problems, rendered


def self_test(rendered):
    """The checks must fail on broken manifests: each mutation must be reported."""
    base_docs, base_files = next(iter(rendered.values()))
    mutations = {
        "unknown field in a Deployment": lambda ds: ds_kind(ds, "Deployment")["spec"].update(
            {"replicaz": 2}),
        "unknown field in a ScaledObject": lambda ds: ds_kind(ds, "ScaledObject")["spec"].update(
            {"minReplicas": 1}),
        "wrong queue for KEDA": lambda ds: ds_kind(ds, "ScaledObject")["spec"]["triggers"][0][
            "metadata"].update({"queueName": "other.work"}),
        "probe on the wrong path": lambda ds: ds_kind(ds, "Deployment")["spec"]["template"][
            "spec"]["containers"][0]["readinessProbe"]["httpGet"].update({"path": "/ready"}),
        "metrics scraped off the admin listener": lambda ds: [d["spec"]["template"]["metadata"][
            "annotations"].update({"prometheus.io/port": "8080"}) for d in ds
            if d["kind"] == "Deployment"],
        "grace below shutdown_grace": lambda ds: [d["spec"]["template"]["spec"].update(
            {"terminationGracePeriodSeconds": 1}) for d in ds if d["kind"] == "Deployment"],
    }
    failed = []
    for what, mutate in mutations.items():
        docs = copy.deepcopy(base_docs)
        mutate(docs)
        problems = Problems()
        for doc in docs:
            validate_doc(doc, "self-test", problems)
        cross_check(docs, base_files, "self-test", problems)
        if not problems:
            failed.append(what)
    return failed


def ds_kind(docs, kind):
    return next(d for d in docs if d["kind"] == kind)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--promtool")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    problems, rendered = check_all(args.promtool)
    count = sum(len(docs) for docs, _ in rendered.values())
    for p in problems:
        print(f"deploy-check: {p}", file=sys.stderr)
    if args.self_test:
        missed = self_test(rendered)
        for m in missed:
            print(f"deploy-check: self-test: a {m} went unnoticed", file=sys.stderr)
        problems += missed
    print(f"deploy-check: {count} Kubernetes documents in {len(rendered)} kustomizations, "
          f"alert rules and dashboard checked{'' if args.promtool else ' (without promtool)'}: "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
