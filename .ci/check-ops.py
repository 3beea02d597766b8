#!/usr/bin/env python3
"""Checks on the operations files under config/ that no linter makes.

- every metric named in the alert rules, the Grafana dashboard and the
  README is one of SPEC section 7, and the dashboard shows all of them;
- the dashboard is well formed and every PromQL query in it parses
  (through `promtool check rules`);
- the alert rules use only recording rules defined beside them;
- the Kubernetes manifests (config/k8s/egress, config/k8s/sidecar, each a
  kustomization whose configMapGenerator makes the ConfigMap from
  portcullis.toml, and the overlay config/k8s/egress-mtls, checked as
  kubectl renders it) agree with that file (only SPEC section 3 keys,
  listeners reachable in a pod, allow_private off, probes on the admin
  port, grace above shutdown_grace + preStop; with tls_listen, its files
  in a mounted Secret and its port offered and reachable), and each
  config is written to OUT_DIR for `portcullis check` (with throw-away
  openssl files in place of the Secret's);
- `kubectl kustomize` renders each folder with a content hash in the
  ConfigMap's name that the pod template refers to, and a changed
  portcullis.toml changes that name (so applying it rolls the pods);
- the admin port is closed to all but Prometheus in both layouts, the
  egress except-lists cover the private and IPv4-embedding prefixes, and
  the Prometheus job (kubernetes.yml) and the PodMonitor select the
  container and port that both manifests name;
- the Dockerfile's dependency layer copies nothing but the manifest, the
  lock file and the stub script, and that script makes a manifest cargo
  accepts.

With a portcullis binary as second argument, also: each portcullis
container's memory limit holds the worst-case memory that
`portcullis check` prints for the config it mounts.

Usage: check-ops.py OUT_DIR [PORTCULLIS_BIN]   (run from the repository root)
"""

import ipaddress
import json
import os
import re
import shutil
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
    "portcullis_tunnel_duration_seconds": "histogram",
    "portcullis_pool_utilization": "gauge",
    "portcullis_upstream_stale_reuses_total": "counter",
    "portcullis_upstream_learned_idle_limit_seconds": "gauge",
    "portcullis_client_tls_handshakes_total": "counter",
}
SERIES = set(METRICS)
for _name, _kind in METRICS.items():
    if _kind == "histogram":
        SERIES |= {_name + "_bucket", _name + "_sum", _name + "_count"}

# SPEC section 3.
PROXY_KEYS = {"listen", "admin_listen", "max_client_connections", "client_idle_timeout",
              "header_read_timeout", "client_stall_timeout", "max_header_bytes",
              "shutdown_grace", "intercept_ca_cert", "intercept_ca_key",
              "tls_listen", "tls_cert", "tls_key", "client_ca"}
DEFAULT_KEYS = {"connect_timeout", "response_timeout", "max_connections", "max_idle",
                "idle_timeout", "max_lifetime", "acquire_timeout", "tcp_keepalive",
                "retry_on_reset", "retry_non_idempotent", "unsafe_reuse_max_idle",
                "max_replay_body", "tunnel_idle_timeout", "allow_private", "learn_idle_limit"}
UPSTREAM_KEYS = DEFAULT_KEYS | {"name", "hosts", "ports", "tls", "connect", "ca_file",
                                "remote_idle_limit"}
CLIENT_KEYS = {"name", "cidrs", "username", "password_env", "cert_names", "upstreams"}
# The files [proxy] names (a Secret's, in a pod): `portcullis check` gets throw-away ones.
TLS_FILE_KEYS = ("tls_cert", "tls_key", "client_ca")

# Whole PromQL names: a recording rule's name (level:metric:operation)
# contains a metric-like part that is not a metric by itself.
NAME_RE = re.compile(r"(?<![a-zA-Z0-9_:{.\"'])[a-zA-Z_:][a-zA-Z0-9_:]*")
RECORDED = set()
errors = []


def fail(where, what):
    errors.append(f"{where}: {what}")


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def metric_names(where, text):
    """The portcullis metrics named in text; recording rule names must be recorded."""
    found = set()
    for name in NAME_RE.findall(text):
        if ":" in name:
            if name.count(":") == 2 and "portcullis_" in name and name not in RECORDED:
                fail(where, f"{name} is not a recording rule of alerts.yml")
            continue
        if name.startswith("portcullis_"):
            found.add(name)
    for name in sorted(found - SERIES):
        fail(where, f"metric {name} is not in SPEC section 7")
    return found


def check_alerts(path):
    with open(path) as f:
        rules = yaml.safe_load(f)
    for group in rules["groups"]:
        RECORDED.update(r["record"] for r in group["rules"] if "record" in r)
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


def load_kustomization(folder, out_dir):
    """The documents of a kustomization folder, with each generated ConfigMap made as
    kustomize makes it (before the hash); each portcullis.toml is checked and written out.
    An overlay (a folder among its resources) is rendered by kubectl instead, with the
    generated ConfigMaps' hashes taken off their names."""
    with open(os.path.join(folder, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    generated = [gen["name"] for gen in kust.get("configMapGenerator", [])]
    docs = []
    if any(os.path.isdir(os.path.join(folder, r)) for r in kust.get("resources", [])):
        docs = render_without_hashes(folder, generated)
    else:
        for resource in kust.get("resources", []):
            with open(os.path.join(folder, resource)) as f:
                docs += [d for d in yaml.safe_load_all(f) if d]
    configs = {}
    for gen in kust.get("configMapGenerator", []):
        where = f"{folder}/kustomization.yaml: configMapGenerator {gen['name']}"
        data = {}
        for file in gen.get("files", []):
            with open(os.path.join(folder, file)) as f:
                data[os.path.basename(file)] = f.read()
        if "portcullis.toml" not in data:
            fail(where, "generates no portcullis.toml")
            continue
        conf = check_toml(f"{folder}/portcullis.toml", data["portcullis.toml"])
        configs[gen["name"]] = conf
        base = os.path.basename(folder.rstrip("/"))
        text = data["portcullis.toml"]
        proxy = conf.get("proxy", {})
        tls_files = {k: proxy[k] for k in TLS_FILE_KEYS if k in proxy}
        if tls_files:
            text = with_test_pki(text, tls_files, os.path.join(out_dir, f"{base}-{gen['name']}-pki"))
        with open(os.path.join(out_dir, f"{base}-{gen['name']}.toml"), "w") as out:
            out.write(text)
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and "portcullis.toml" in doc.get("data", {}):
            fail(folder, f"ConfigMap {doc['metadata']['name']} is written out: generate it from "
                         "portcullis.toml (configMapGenerator), so that an edit rolls the pods")
    return docs, configs


def render_without_hashes(folder, generated):
    """`kubectl kustomize folder`, with `<name>-<hash>` of the generated ConfigMaps back to
    `<name>` (in their documents and in the volumes that mount them) and those ConfigMaps
    themselves left out, as load_kustomization makes them."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        fail(folder, "is an overlay: checking it needs kubectl (apt-get install kubernetes-client)")
        return []
    run = subprocess.run([kubectl, "kustomize", folder], capture_output=True, text=True)
    if run.returncode != 0:
        fail(folder, f"kubectl kustomize failed:\n{run.stderr}")
        return []

    def base_name(name):
        for base in generated:
            if re.fullmatch(re.escape(base) + r"-[a-z0-9]{10}", name):
                return base
        return None

    docs = []
    for d in yaml.safe_load_all(run.stdout):
        if not d:
            continue
        if d.get("kind") == "ConfigMap" and base_name(d["metadata"]["name"]):
            continue
        for _, template in pod_templates([d]):
            for v in template["spec"].get("volumes", []):
                if "configMap" in v and base_name(v["configMap"]["name"]):
                    v["configMap"]["name"] = base_name(v["configMap"]["name"])
        docs.append(d)
    return docs


def with_test_pki(text, tls_files, pki_dir):
    """The config with its certificate, key and CA paths (a Secret's files in the pod)
    pointing at throw-away ones made with openssl, so `portcullis check` can load them."""
    os.makedirs(pki_dir, exist_ok=True)
    ca, ca_key = os.path.join(pki_dir, "ca.crt"), os.path.join(pki_dir, "ca.key")
    cert, key = os.path.join(pki_dir, "tls.crt"), os.path.join(pki_dir, "tls.key")
    csr, ext = os.path.join(pki_dir, "tls.csr"), os.path.join(pki_dir, "ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:portcullis.portcullis.svc\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=ci CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=portcullis"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ):
        run = subprocess.run(["openssl", *cmd], capture_output=True, text=True)
        if run.returncode != 0:
            fail(pki_dir, f"openssl {cmd[0]} failed: {run.stderr}")
            return text
    made = {"tls_cert": cert, "tls_key": key, "client_ca": ca}
    for k, path in tls_files.items():
        text = text.replace(f'"{path}"', json.dumps(made[k]))
    return text


def check_tls_listener(folder, docs, template, container, conf):
    """With tls_listen, the pod mounts the files from a Secret volume, the container and the
    Service offer the port, and some NetworkPolicy lets clients reach it."""
    proxy = conf.get("proxy", {})
    if "tls_listen" not in proxy:
        return
    where = f"{folder}: container {container['name']}"
    port = int(proxy["tls_listen"].rsplit(":", 1)[1])
    secrets = {v["name"] for v in template["spec"].get("volumes", []) if "secret" in v}
    mounts = [m["mountPath"].rstrip("/") + "/" for m in container.get("volumeMounts", [])
              if m["name"] in secrets]
    for k in TLS_FILE_KEYS:
        path = proxy.get(k)
        if path and not any(path.startswith(m) for m in mounts):
            fail(where, f"{k} {path} is not in a mounted Secret")
    names = {p.get("name") for p in container.get("ports", []) if p.get("containerPort") == port}
    if not names:
        fail(where, f"declares no containerPort {port} (tls_listen)")
    services = [p for d in docs if d.get("kind") == "Service" for p in d["spec"].get("ports", [])
                if p.get("targetPort") == port or p.get("targetPort") in names]
    if not services:
        fail(folder, f"no Service port targets the TLS listener ({port})")
    rules = [r for d in docs if d.get("kind") == "NetworkPolicy"
             for r in d["spec"].get("ingress", [])
             if any(p.get("port") == port for p in r.get("ports", []))]
    if not rules:
        fail(folder, f"no NetworkPolicy lets clients reach the TLS listener ({port})")


def pod_templates(docs):
    for doc in docs:
        if doc.get("kind") == "Deployment":
            yield f"Deployment {doc['metadata']['name']}", doc["spec"]["template"]


# (where, config file written, memory limit) of each portcullis container.
MEMORY_LIMITS = []

QUANTITY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def quantity_bytes(text):
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text).strip())
    if not m or m.group(2) not in QUANTITY:
        return None
    return int(float(m.group(1)) * QUANTITY[m.group(2)])


def check_memory_limits(binary):
    """Each container's memory limit holds the worst case `portcullis check` prints."""
    for where, config, limit in MEMORY_LIMITS:
        out = subprocess.run([binary, "check", "--config", config],
                             capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines()
                     if l.startswith("# worst-case memory:")), None)
        m = re.search(r"\((\d+) bytes\)", line or "")
        if out.returncode != 0 or not m:
            fail(where, f"portcullis check printed no worst-case memory: {out.stderr.strip()}")
            continue
        budget = int(m.group(1))
        have = quantity_bytes(limit)
        if have is None:
            fail(where, f"memory limit {limit!r} is not a Kubernetes quantity")
        elif have < budget:
            fail(where, f"memory limit {limit} ({have} bytes) is below the worst case "
                        f"portcullis check prints for its config: {line[2:]}")


def check_k8s(folder, out_dir):
    docs, configs = load_kustomization(folder, out_dir)
    for doc in docs:
        if not all(k in doc for k in ("apiVersion", "kind", "metadata")):
            fail(folder, "a document lacks apiVersion, kind or metadata")
    for name, template in pod_templates(docs):
        where = f"{folder}: {name}"
        pod = template["spec"]
        sc = pod.get("securityContext", {})
        if sc.get("runAsNonRoot") is not True:
            fail(where, "pod needs runAsNonRoot: true")
        annotations = template.get("metadata", {}).get("annotations", {}) or {}
        for key in annotations:
            if key.startswith("prometheus.io/"):
                fail(where, f"annotation {key}: Prometheus finds portcullis by container and port "
                            "name; in a sidecar pod these annotations belong to the app")
            if "config-revision" in key:
                fail(where, f"annotation {key}: the generated ConfigMap's hash rolls the pods")
        mounted = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
        proxies = [c for c in pod.get("containers", []) + pod.get("initContainers", [])
                   if "portcullis" in c.get("image", "")]
        if not proxies:
            fail(where, "has no portcullis container")
        for c in proxies:
            cwhere = f"{where} container {c['name']}"
            container_checks(cwhere, c)
            if c["name"] != "portcullis":
                fail(cwhere, "must be named portcullis: the scrape job and PodMonitor select it by name")
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
            if ports.get("admin") != 9090:
                fail(cwhere, "needs port 9090 named admin: the scrape job and PodMonitor select it")
            conf = None
            for m in c.get("volumeMounts", []):
                if m["name"] in mounted and mounted[m["name"]] in configs:
                    conf = configs[mounted[m["name"]]]
                    base = os.path.basename(folder.rstrip("/"))
                    written = os.path.join(out_dir, f"{base}-{mounted[m['name']]}.toml")
                    limit = c.get("resources", {}).get("limits", {}).get("memory")
                    MEMORY_LIMITS.append((cwhere, written, limit))
            if conf is None:
                fail(cwhere, "mounts no generated ConfigMap with a portcullis.toml")
                continue
            grace = seconds(conf["proxy"].get("shutdown_grace", "30s"))
            cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pre_stop = int(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else 0
            total = pod.get("terminationGracePeriodSeconds", 30)
            if total <= grace + pre_stop:
                fail(cwhere, f"terminationGracePeriodSeconds {total} must exceed "
                             f"shutdown_grace {grace:g}s + preStop sleep {pre_stop}s")
            check_tls_listener(folder, docs, template, c, conf)
        for c in pod.get("containers", []):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "HTTPS_PROXY" in env:
                for key in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
                    if not env.get(key):
                        fail(f"{where} container {c['name']}", f"sets HTTPS_PROXY but not {key}")
        check_admin_closed(folder, docs, template)
    check_rendered(folder, configs)
    return docs


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def check_admin_closed(folder, docs, template):
    """Some NetworkPolicy selects the pod for ingress and lets only Prometheus reach 9090."""
    labels = template["metadata"].get("labels", {})
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"
                and "Ingress" in d["spec"].get("policyTypes", [])
                and selects(d["spec"].get("podSelector", {}), labels)]
    if not policies:
        fail(folder, f"no NetworkPolicy limits ingress to the pods labelled {labels}: "
                     "every pod in the cluster could read the admin port")
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = [p.get("port") for p in rule.get("ports", [])]
            if not ports or 9090 in ports or "admin" in ports:
                peers = rule.get("from", [])
                prometheus_only = peers and all(
                    (p.get("podSelector", {}).get("matchLabels") or {}).get("app.kubernetes.io/name")
                    == "prometheus" for p in peers)
                if not prometheus_only:
                    fail(f"{folder}: NetworkPolicy {policy['metadata']['name']}",
                         "a rule opens the admin port 9090 to more than Prometheus")


def check_rendered(folder, configs):
    """kubectl kustomize hashes the ConfigMap name; an edited portcullis.toml changes it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            fail(folder, "kubectl is missing under CI (apt-get install kubernetes-client)")
        else:
            print(f"SKIPPED: kubectl not found; {folder} not rendered", file=sys.stderr)
        return

    def render(path):
        run = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True)
        if run.returncode != 0:
            fail(folder, f"kubectl kustomize failed:\n{run.stderr}")
            return {}
        docs = [d for d in yaml.safe_load_all(run.stdout) if d]
        names = {}
        for d in docs:
            if d.get("kind") == "ConfigMap":
                for base in configs:
                    if re.fullmatch(re.escape(base) + r"-[a-z0-9]{10}", d["metadata"]["name"]):
                        names[base] = d["metadata"]["name"]
        for _, template in pod_templates(docs):
            used = {v["configMap"]["name"] for v in template["spec"].get("volumes", [])
                    if "configMap" in v}
            for base, name in names.items():
                if base in used or name not in used:
                    fail(folder, f"the rendered pod template does not refer to {name}")
        return names

    names = render(folder)
    for base in configs:
        if base not in names:
            fail(folder, f"kubectl kustomize made no ConfigMap {base}-<hash>")
    with tempfile.TemporaryDirectory() as tmp:
        # The whole config/k8s, so that an overlay finds its base beside it.
        parent = os.path.dirname(os.path.abspath(folder.rstrip("/")))
        shutil.copytree(parent, os.path.join(tmp, "k8s"))
        copy = os.path.join(tmp, "k8s", os.path.basename(folder.rstrip("/")))
        with open(os.path.join(copy, "portcullis.toml"), "a") as f:
            f.write("# an edit\n")
        edited = render(copy)
    for base, name in names.items():
        if edited.get(base) == name:
            fail(folder, f"editing portcullis.toml left the ConfigMap name {name} unchanged: "
                         "the pods would not roll")


REQUIRED_EXCEPT = {
    "0.0.0.0/0": ["10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                  "172.16.0.0/12", "192.168.0.0/16"],
    "::/0": ["::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "fc00::/7",
             "fe80::/10"],
}


def check_egress_except(folder, docs):
    """The internet egress rule excludes private ranges, also in their IPv6 disguises."""
    blocks = [peer["ipBlock"] for d in docs if d.get("kind") == "NetworkPolicy"
              for rule in d["spec"].get("egress", []) for peer in rule.get("to", [])
              if "ipBlock" in peer]
    for cidr, required in REQUIRED_EXCEPT.items():
        block = next((b for b in blocks if b["cidr"] == cidr), None)
        if block is None:
            fail(folder, f"no egress ipBlock {cidr}")
            continue
        have = [ipaddress.ip_network(e) for e in block.get("except", [])]
        for net in have:
            if not net.subnet_of(ipaddress.ip_network(cidr)) or net == ipaddress.ip_network(cidr):
                fail(folder, f"except {net} is not a strict subset of {cidr}")
        for want in required:
            want = ipaddress.ip_network(want)
            if not any(want.subnet_of(h) for h in have):
                fail(folder, f"ipBlock {cidr} does not except {want}")


def check_scrape_selection():
    """kubernetes.yml and the PodMonitor keep container "portcullis", port "admin"."""
    path = "config/prometheus/kubernetes.yml"
    with open(path) as f:
        conf = yaml.safe_load(f)
    jobs = [j for j in conf.get("scrape_configs", []) if j.get("job_name") == "portcullis"]
    if len(jobs) != 1:
        fail(path, "needs exactly one job named portcullis")
        return
    job = jobs[0]
    keeps = [(r.get("source_labels"), r.get("regex")) for r in job.get("relabel_configs", [])
             if r.get("action") == "keep"]
    want = (["__meta_kubernetes_pod_container_name", "__meta_kubernetes_pod_container_port_name"],
            "portcullis;admin")
    if want not in keeps:
        fail(path, f"the portcullis job must keep {want}")
    for src, _ in keeps:
        if any("pod_label" in s or "pod_annotation" in s for s in src):
            fail(path, f"keep on {src}: sidecar pods carry their app's labels and annotations")
    # Debian's promtool has no Kubernetes discovery: check the rest with a static target.
    static = dict(conf)
    static["scrape_configs"] = [dict(job, static_configs=[{"targets": ["127.0.0.1:9090"]}])]
    del static["scrape_configs"][0]["kubernetes_sd_configs"]
    static["rule_files"] = [os.path.abspath("config/prometheus/alerts.yml")]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(static, f)
    try:
        run = subprocess.run(["promtool", "check", "config", f.name], capture_output=True, text=True)
        if run.returncode != 0:
            fail(path, "promtool check config (with a static target) failed:\n" + run.stdout + run.stderr)
    finally:
        os.unlink(f.name)

    path = "config/prometheus/podmonitor.yaml"
    with open(path) as f:
        pm = yaml.safe_load(f)
    if pm.get("kind") != "PodMonitor" or pm.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(path, "is not a monitoring.coreos.com/v1 PodMonitor")
        return
    endpoints = pm["spec"].get("podMetricsEndpoints", [])
    if [e.get("port") for e in endpoints] != ["admin"]:
        fail(path, "needs one endpoint on the port named admin")
    for e in endpoints:
        rel = e.get("relabelings", [])
        if not any(r.get("action") == "keep" and r.get("regex") == "portcullis"
                   and r.get("sourceLabels") == ["__meta_kubernetes_pod_container_name"] for r in rel):
            fail(path, "must keep only the container named portcullis")
        if not any(r.get("targetLabel") == "job" and r.get("replacement") == "portcullis" for r in rel):
            fail(path, "must set job=portcullis (alerts.yml expects it)")
    if pm["spec"].get("selector") not in ({}, None) and "matchLabels" in pm["spec"]["selector"]:
        fail(path, "a label selector misses sidecar pods (they carry their app's labels)")


def check_dockerfile():
    """A change under benches/ (or src/, tests/) must not invalidate the dependency layer."""
    path = "Dockerfile"
    with open(path) as f:
        lines = [l.strip() for l in f if l.strip() and not l.strip().startswith("#")]
    image = [l for l in lines if l.startswith("ARG RUST_IMAGE=")]
    if not image or not re.fullmatch(r"ARG RUST_IMAGE=rust:\d+\.\d+\.\d+-[a-z]+(@sha256:[0-9a-f]{64})?",
                                     image[0]):
        fail(path, "the builder image must be pinned by version: ARG RUST_IMAGE=rust:X.Y.Z-<suite>")
    if not any(l.startswith("FROM ${RUST_IMAGE} AS builder") for l in lines):
        fail(path, "the builder stage must be FROM ${RUST_IMAGE} AS builder")
    first_build = next((i for i, l in enumerate(lines) if "cargo build" in l), None)
    if first_build is None:
        fail(path, "no cargo build")
        return
    allowed = {"Cargo.toml", "Cargo.lock", "docker/stub-targets.sh"}
    for line in lines[:first_build]:
        if line.startswith(("COPY", "ADD")):
            for src in line.split()[1:-1]:
                if not src.startswith("--") and src not in allowed:
                    fail(path, f"the dependency layer copies {src}: a change there would "
                               "rebuild every dependency")
    # The stubs must make a manifest cargo accepts with no source file present. Naming a bin
    # that does not exist makes cargo check every target's file and stop before compiling.
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("Cargo.toml", "Cargo.lock"):
            shutil.copy(name, tmp)
        run = subprocess.run(["sh", os.path.abspath("docker/stub-targets.sh")], cwd=tmp,
                             capture_output=True, text=True)
        if run.returncode != 0:
            fail("docker/stub-targets.sh", run.stdout + run.stderr)
            return
        env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(tmp, "target"))
        run = subprocess.run(["cargo", "build", "--locked", "--bin", "no-such-bin"],
                             cwd=tmp, capture_output=True, text=True, env=env)
        if "no bin target named" not in run.stderr:
            fail("docker/stub-targets.sh", "cargo rejects the stubbed manifest:\n" + run.stderr)


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    check_alerts("config/prometheus/alerts.yml")
    check_dashboard("config/grafana/portcullis-dashboard.json")
    egress = check_k8s("config/k8s/egress", out_dir)
    kinds = {doc.get("kind") for doc in egress}
    for kind in ("Namespace", "Deployment", "Service", "PodDisruptionBudget",
                 "HorizontalPodAutoscaler", "NetworkPolicy"):
        if kind not in kinds:
            fail("config/k8s/egress", f"has no {kind}")
    check_egress_except("config/k8s/egress", egress)
    check_k8s("config/k8s/sidecar", out_dir)
    mtls = check_k8s("config/k8s/egress-mtls", out_dir)
    check_egress_except("config/k8s/egress-mtls", mtls)
    check_scrape_selection()
    check_dockerfile()
    if os.path.exists("README.md"):
        with open("README.md") as f:
            named = metric_names("README.md", f.read())
        for name in sorted(set(METRICS) - named):
            fail("README.md", f"the metrics table lacks {name}")
    if len(sys.argv) > 2:
        check_memory_limits(sys.argv[2])
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("operations files: consistent with SPEC sections 3 and 7")


if __name__ == "__main__":
    main()
