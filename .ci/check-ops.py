#!/usr/bin/env python3
"""Checks on the operations files under config/ that no linter makes.

- every metric named in the alert rules, the Grafana dashboard and the
  README is one of SPEC section 7, and the dashboard shows all of them;
- the dashboard is well formed and every PromQL query in it parses
  (through `promtool check rules`);
- the Kubernetes manifests agree with the portcullis.toml they embed
  (only SPEC section 3 keys, listeners reachable in a pod, allow_private
  off, probes on the admin port, grace above shutdown_grace + preStop),
  and each embedded config is written to OUT_DIR for `portcullis check`.

Usage: check-ops.py OUT_DIR      (run from the repository root)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

# SPEC section 7: name -> type.
METRICS = {
    "portcullis_requests_total": "counter",
    "portcullis_request_duration_seconds": "histogram",
    "portcullis_upstream_connections": "gauge",
    "portcullis_upstream_connection_limit": "gauge",
    "portcullis_upstream_connections_opened_total": "counter",
    "portcullis_upstream_connections_closed_total": "counter",
    "portcullis_upstream_connection_reuse_idle_seconds": "histogram",
    "portcullis_pool_waiting": "gauge",
    "portcullis_pool_wait_seconds": "histogram",
    "portcullis_pool_acquire_timeouts_total": "counter",
    "portcullis_retries_total": "counter",
    "portcullis_denied_total": "counter",
    "portcullis_tunnels_active": "gauge",
    "portcullis_tunnel_bytes_total": "counter",
    "portcullis_client_connections": "gauge",
    "portcullis_config_reloads_total": "counter",
}
SERIES = set(METRICS)
for _name, _kind in METRICS.items():
    if _kind == "histogram":
        SERIES |= {_name + "_bucket", _name + "_sum", _name + "_count"}

# SPEC section 3.
PROXY_KEYS = {"listen", "admin_listen", "max_client_connections", "client_idle_timeout",
              "header_read_timeout", "max_header_bytes", "shutdown_grace"}
DEFAULT_KEYS = {"connect_timeout", "response_timeout", "max_connections", "max_idle",
                "idle_timeout", "max_lifetime", "acquire_timeout", "tcp_keepalive",
                "retry_on_reset", "retry_non_idempotent", "unsafe_reuse_max_idle",
                "max_replay_body", "tunnel_idle_timeout", "allow_private"}
UPSTREAM_KEYS = DEFAULT_KEYS | {"name", "hosts", "ports", "tls", "ca_file", "remote_idle_limit"}
CLIENT_KEYS = {"name", "cidrs", "username", "password_env", "upstreams"}

METRIC_RE = re.compile(r"\bportcullis_[a-z0-9_]+")
errors = []


def fail(where, what):
    errors.append(f"{where}: {what}")


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def metric_names(where, text):
    found = set(METRIC_RE.findall(text))
    for name in sorted(found - SERIES):
        fail(where, f"metric {name} is not in SPEC section 7")
    return found


def check_alerts(path):
    with open(path) as f:
        rules = yaml.safe_load(f)
    for group in rules["groups"]:
        for rule in group["rules"]:
            where = f"{path}: {rule.get('alert') or rule.get('record')}"
            metric_names(where, rule["expr"])
            if "alert" in rule:
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    fail(where, "needs labels.severity")
                for key in ("summary", "description"):
                    if not rule.get("annotations", {}).get(key):
                        fail(where, f"needs annotations.{key}")


def check_dashboard(path):
    with open(path) as f:
        dash = json.load(f)
    if not isinstance(dash.get("schemaVersion"), int):
        fail(path, "schemaVersion missing")
    if not any(i.get("name") == "DS_PROMETHEUS" for i in dash.get("__inputs", [])):
        fail(path, "__inputs has no DS_PROMETHEUS")
    seen_ids, cells, queries = set(), {}, []
    for panel in dash["panels"]:
        where = f"{path}: panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in seen_ids:
            fail(where, "duplicate panel id")
        seen_ids.add(panel.get("id"))
        pos = panel["gridPos"]
        if pos["x"] + pos["w"] > 24:
            fail(where, "wider than the 24-column grid")
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in cells:
                    fail(where, f"overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = panel.get("id")
        if panel["type"] == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            fail(where, "datasource is not ${DS_PROMETHEUS}")
        if not panel.get("targets"):
            fail(where, "has no queries")
        for target in panel.get("targets", []):
            queries.append((where, target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            metric_names(f"{path}: variable {var['name']}", var["definition"])
    shown = set()
    for where, expr in queries:
        shown |= metric_names(where, expr)
    for name, kind in METRICS.items():
        wanted = {name + "_bucket"} if kind == "histogram" else {name}
        if not wanted & shown:
            fail(path, f"no panel shows {name}")
    check_promql(path, queries)


def check_promql(path, queries):
    """promtool has no expression checker, so parse them as recording rules."""
    rules = []
    for i, (where, expr) in enumerate(queries):
        expr = (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
                .replace("$instance", ".*").replace("$upstream", ".*"))
        if "$" in expr.replace("{{", ""):
            fail(where, f"unknown variable in {expr!r}")
        rules.append({"record": f"dashboard:query:{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    try:
        run = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        if run.returncode != 0:
            fail(path, "a query does not parse:\n" + run.stdout + run.stderr)
    finally:
        os.unlink(f.name)


def check_toml(where, text):
    conf = tomllib.loads(text)
    for section, allowed in (("proxy", PROXY_KEYS), ("defaults", DEFAULT_KEYS)):
        for key in sorted(set(conf.get(section, {})) - allowed):
            fail(where, f"[{section}] {key} is not a SPEC section 3 key")
    for table, allowed in (("upstream", UPSTREAM_KEYS), ("client", CLIENT_KEYS)):
        for entry in conf.get(table, []):
            for key in sorted(set(entry) - allowed):
                fail(where, f"[[{table}]] {entry.get('name')}: {key} is not a SPEC section 3 key")
    for key in sorted(set(conf) - {"proxy", "defaults", "upstream", "client"}):
        fail(where, f"[{key}] is not a SPEC section 3 table")
    proxy = conf.get("proxy", {})
    if proxy.get("admin_listen") != "0.0.0.0:9090":
        fail(where, "admin_listen must be 0.0.0.0:9090: probes and Prometheus use the pod IP")
    if proxy.get("listen") not in ("0.0.0.0:3128", "127.0.0.1:3128"):
        fail(where, "listen must be 0.0.0.0:3128 (or 127.0.0.1:3128 for a sidecar)")
    if conf.get("defaults", {}).get("allow_private") is not False:
        fail(where, "[defaults] allow_private must be false")
    for entry in conf.get("upstream", []):
        if entry.get("allow_private"):
            fail(where, f"upstream {entry.get('name')} sets allow_private")
    return conf


def container_checks(where, c):
    probes = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in probes.items():
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", 9090):
            fail(where, f"{probe} must GET {path} on the admin port")
    sc = c.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(where, "needs readOnlyRootFilesystem: true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(where, "needs allowPrivilegeEscalation: false")
    res = c.get("resources", {})
    if not res.get("requests") or not res.get("limits"):
        fail(where, "needs resource requests and limits")


def check_k8s(path, out_dir):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    configs = {}
    for doc in docs:
        if not all(k in doc for k in ("apiVersion", "kind", "metadata")):
            fail(path, "a document lacks apiVersion, kind or metadata")
            continue
        if doc["kind"] == "ConfigMap" and "portcullis.toml" in doc.get("data", {}):
            name = doc["metadata"]["name"]
            where = f"{path}: ConfigMap {name}"
            configs[name] = check_toml(where, doc["data"]["portcullis.toml"])
            base = os.path.splitext(os.path.basename(path))[0]
            with open(os.path.join(out_dir, f"{base}-{name}.toml"), "w") as out:
                out.write(doc["data"]["portcullis.toml"])
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        where = f"{path}: Deployment {doc['metadata']['name']}"
        pod = doc["spec"]["template"]["spec"]
        sc = pod.get("securityContext", {})
        if sc.get("runAsNonRoot") is not True:
            fail(where, "pod needs runAsNonRoot: true")
        mounted = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
        proxies = [c for c in pod.get("containers", []) + pod.get("initContainers", [])
                   if "portcullis" in c.get("image", "")]
        if not proxies:
            fail(where, "has no portcullis container")
        for c in proxies:
            cwhere = f"{where} container {c['name']}"
            container_checks(cwhere, c)
            conf = None
            for m in c.get("volumeMounts", []):
                if m["name"] in mounted and mounted[m["name"]] in configs:
                    conf = configs[mounted[m["name"]]]
            if conf is None:
                fail(cwhere, "mounts no ConfigMap with a portcullis.toml")
                continue
            grace = seconds(conf["proxy"].get("shutdown_grace", "30s"))
            cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pre_stop = int(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else 0
            total = pod.get("terminationGracePeriodSeconds", 30)
            if total <= grace + pre_stop:
                fail(cwhere, f"terminationGracePeriodSeconds {total} must exceed "
                             f"shutdown_grace {grace:g}s + preStop sleep {pre_stop}s")
        for c in pod.get("containers", []):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "HTTPS_PROXY" in env:
                for key in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
                    if not env.get(key):
                        fail(f"{where} container {c['name']}", f"sets HTTPS_PROXY but not {key}")
    return {doc.get("kind") for doc in docs}


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    check_alerts("config/prometheus/alerts.yml")
    check_dashboard("config/grafana/portcullis-dashboard.json")
    kinds = check_k8s("config/k8s/egress.yaml", out_dir)
    for kind in ("Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                 "HorizontalPodAutoscaler", "NetworkPolicy"):
        if kind not in kinds:
            fail("config/k8s/egress.yaml", f"has no {kind}")
    check_k8s("config/k8s/sidecar.yaml", out_dir)
    if os.path.exists("README.md"):
        with open("README.md") as f:
            named = metric_names("README.md", f.read())
        for name in sorted(set(METRICS) - named):
            fail("README.md", f"the metrics table lacks {name}")
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("operations files: consistent with SPEC sections 3 and 7")


if __name__ == "__main__":
    main()
