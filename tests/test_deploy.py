"""The deployment files, checked offline: no Docker, no cluster, no network.

Dockerfile, docker-compose.yml and deploy/ restate facts that live in the code (setting
names and defaults, topic names, the web port, metric names, the user the image runs
as). These tests tie each restatement to its source, so that a rename in the code, or a
typo in a manifest, fails here instead of in someone's cluster. The schemas travel inside
wheels, so nothing is downloaded: docker-compose.yml is validated against the Compose
Specification (vendored by check-jsonschema), PromQL is parsed with promql-parser, and the
Kubernetes manifests are validated against the Kubernetes JSON schemas of kubernetes-validate.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from streams import metrics
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))

PREFIX = "LEADSCORE_"
FIELDS = Settings.model_fields


def default(field: str) -> Any:
    """A setting's declared default (not the environment's value)."""
    return FIELDS[field].default


WEB_PORT: int = default("web_port")
PARTITIONS: int = default("partitions")
TOPICS = {default("topic_events"), default("topic_hot"), default("topic_dlq"),
          default("topic_account_awards")}


def setting_field(variable: str) -> str | None:
    """``LEADSCORE_WEB_PORT`` -> ``web_port``; None for a name that is no setting."""
    name = variable.removeprefix(PREFIX).lower()
    return name if variable.startswith(PREFIX) and name in FIELDS else None


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = load_yaml(ROOT / "docker-compose.yml")
    return dict(compose["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, whether written as a mapping or as ``KEY=VALUE`` items."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source, for short (``src:dst[:ro]``) and long volume syntax."""
    result = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            result[volume["target"]] = volume["source"]
        else:
            source, target = volume.split(":")[:2]
            result[target] = source
    return result


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """The mounts whose source is a path of this repository (not a named volume)."""
    return {target: ROOT / source for target, source in mounts(service).items()
            if source.startswith((".", "/"))}


def command(service: dict[str, Any]) -> list[str]:
    value = service["command"]
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def worker_port(services: dict[str, Any]) -> int:
    return int(environment(services["worker"])["LEADSCORE_WEB_PORT"])


def test_compose_file_follows_the_compose_specification() -> None:
    # The Compose Specification's JSON schema, vendored in tests/schemas (no network).
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in jsonschema.Draft202012Validator(schema).iter_errors(document)]
    assert problems == []


def test_compose_has_every_service(services: dict[str, Any]) -> None:
    assert set(services) == {"kafka", "kafka-init", "redis", "worker", "prometheus", "grafana"}


def test_worker_starts_after_the_topics_exist_and_redis_answers(
        services: dict[str, Any]) -> None:
    assert services["worker"]["depends_on"] == {
        "kafka-init": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["kafka-init"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    for name in ("kafka", "redis"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"


def test_worker_environment_holds_only_real_settings(services: dict[str, Any]) -> None:
    env = environment(services["worker"])
    variables = {key for key in env if key.startswith(PREFIX)}
    assert variables >= {"LEADSCORE_BROKER", "LEADSCORE_REDIS_URL", "LEADSCORE_RULES",
                         "LEADSCORE_WEB_PORT"}
    assert {key for key in variables if setting_field(key) is None} == set()
    # The values are valid too (a port that is no integer would stop the worker at start).
    settings = Settings(**{setting_field(key): env[key] for key in variables})
    assert settings.web_port == WEB_PORT


def test_worker_publishes_and_checks_its_web_port(services: dict[str, Any]) -> None:
    worker = services["worker"]
    port = worker_port(services)
    published = [str(item).split(":") for item in worker["ports"]]
    assert [(int(p[-2]), int(p[-1].split("/")[0])) for p in published] == [(port, port)]
    probe = " ".join(worker["healthcheck"]["test"])
    url = re.search(r"://[\w.-]+:(\d+)(/[\w/]*)", probe)
    assert url is not None, probe
    assert (int(url[1]), url[2]) == (port, "/healthz")


def test_worker_reaches_kafka_and_redis_by_their_service_names(
        services: dict[str, Any]) -> None:
    env = environment(services["worker"])
    advertised = environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    listeners = {item.split("://", 1)[1] for item in advertised.split(",")}
    brokers = {url.removeprefix("kafka://") for url in env["LEADSCORE_BROKER"].split(";")}
    assert brokers == {"kafka:9092"}
    assert brokers <= listeners
    assert env["LEADSCORE_REDIS_URL"] == "redis://redis:6379/0"


def test_kafka_init_creates_the_settings_topics(services: dict[str, Any]) -> None:
    script = " ".join(command(services["kafka-init"]))
    created = {}
    for line in script.split("\n"):
        if "kafka-topics.sh" not in line:
            continue
        args = shlex.split(line)
        assert {"--create", "--if-not-exists"} <= set(args), line
        assert args[args.index("--bootstrap-server") + 1] == "kafka:9092"
        created[args[args.index("--topic") + 1]] = int(args[args.index("--partitions") + 1])
    assert created == dict.fromkeys(TOPICS, PARTITIONS)
    assert PARTITIONS == 8


def test_redis_fsyncs_every_write(services: dict[str, Any]) -> None:
    args = command(services["redis"])
    pairs = set(pairwise(args))
    assert {("--appendonly", "yes"), ("--appendfsync", "always")} <= pairs
    assert "/data" in mounts(services["redis"]), "the append-only file must outlive the container"


def test_every_file_mounted_from_the_repository_exists(services: dict[str, Any]) -> None:
    missing = [f"{name}: {path}" for name, service in services.items()
               for path in bind_mounts(service).values() if not path.exists()]
    assert missing == []
    assert (ROOT / services["worker"]["build"] / "Dockerfile").is_file()
    rules = bind_mounts(services["worker"])["/etc/leadscore/rules.yaml"]
    assert rules == ROOT / "config" / "rules.yaml"
    assert environment(services["worker"])["LEADSCORE_RULES"] == "/etc/leadscore/rules.yaml"


@pytest.fixture(scope="module")
def prometheus_config(services: dict[str, Any]) -> dict[str, Any]:
    path = bind_mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    assert path == DEPLOY / "prometheus" / "prometheus.yml"
    return dict(load_yaml(path))


def test_prometheus_scrapes_the_worker(services: dict[str, Any],
                                       prometheus_config: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
    job = jobs["leadscore"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"worker:{worker_port(services)}"]


def test_prometheus_loads_the_alert_rules(services: dict[str, Any],
                                          prometheus_config: dict[str, Any]) -> None:
    mounted = bind_mounts(services["prometheus"])
    assert [mounted.get(path) for path in prometheus_config["rule_files"]] == [ALERTS]


def test_grafana_provisions_the_datasource_and_the_dashboard(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounted = bind_mounts(grafana)
    by_source = {path: target for target, path in mounted.items()}
    dashboard_target = PurePosixPath(by_source[DEPLOY / "grafana" / "leadscore-dashboard.json"])

    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounted["/etc/grafana/provisioning/dashboards"] == provisioning / "dashboards"
    assert mounted["/etc/grafana/provisioning/datasources"] == provisioning / "datasources"
    providers = load_yaml(provisioning / "dashboards" / "leadscore.yml")["providers"]
    assert [PurePosixPath(p["options"]["path"]) for p in providers] == [dashboard_target.parent]
    env = environment(grafana)
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == str(dashboard_target)
    assert (env["GF_AUTH_ANONYMOUS_ENABLED"], env["GF_AUTH_ANONYMOUS_ORG_ROLE"]) == (
        "true", "Viewer")

    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    assert "9090:9090" in services["prometheus"]["ports"]
    dashboard = json.loads((DEPLOY / "grafana" / "leadscore-dashboard.json").read_text())
    variable = template_variables(dashboard)["DS_PROMETHEUS"]
    assert variable["current"]["value"] == source["uid"]


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's last stage, continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def instruction(keyword: str) -> list[str]:
    return [args for key, args in dockerfile() if key == keyword]


def image_uid() -> str:
    (user,) = instruction("USER")
    return user.split(":")[0]


def test_image_runs_as_a_numeric_non_root_user() -> None:
    # Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert image_uid().isdigit()
    assert image_uid() != "0"


def test_image_exposes_and_checks_the_default_web_port() -> None:
    assert instruction("EXPOSE") == [str(WEB_PORT)]
    (healthcheck,) = instruction("HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert str(WEB_PORT) in healthcheck


def test_image_runs_the_worker_command() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = instruction("ENTRYPOINT")
    (cmd,) = instruction("CMD")
    assert json.loads(entrypoint) == ["leadscore"]
    assert "leadscore" in scripts
    assert json.loads(cmd) == ["worker"]


def test_image_environment_holds_only_real_settings() -> None:
    variables = [token.split("=", 1)[0] for args in instruction("ENV")
                 for token in shlex.split(args)]
    assert {v for v in variables if v.startswith(PREFIX) and setting_field(v) is None} == set()
    assert "LEADSCORE_RULES" in variables


def test_image_copies_only_files_the_build_context_keeps() -> None:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    copies = [shlex.split(line.strip()[5:]) for line in text.splitlines()
              if line.strip().upper().startswith("COPY ")]
    sources = [src for args in copies if not any(a.startswith("--from") for a in args)
               for src in args[:-1] if not src.startswith("--")]
    assert sources, "no COPY from the build context"
    # .dockerignore patterns, matched against each source and its parent directories
    # (negated `!` patterns are not used there, so they are not handled here).
    patterns = [line.strip().lstrip("/") for line in (ROOT / ".dockerignore").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    for source in sources:
        assert (ROOT / source).exists(), source
        parts = PurePosixPath(source).parts
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        excluded = [p for p in patterns for prefix in prefixes if fnmatch.fnmatch(prefix, p)]
        assert excluded == [], f"{source} is excluded by .dockerignore {excluded}"


# --- metric names in the alerts and the dashboard -----------------------------------------------


@pytest.fixture(scope="module")
def exposed_metrics() -> Iterator[set[str]]:
    """Every series name /metrics can serve. ``leadscore_consumer_lag`` and
    ``leadscore_partition_failing_seconds`` come from collectors that only ``watch``
    registers; a worker's own sources are put back afterwards."""
    previous = list(metrics._collectors)
    metrics.watch(lambda: [], lambda: [])
    names = set()
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count")}
        elif family.type == "summary":
            names |= {family.name, f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    if previous:
        metrics.watch(previous[0].lags, previous[1].stalls)  # type: ignore[attr-defined]
    yield names


def referenced_metrics(path: Path) -> set[str]:
    # The whole text, not only the queries: a name in a template variable counts too.
    return set(re.findall(r"\bleadscore_[a-z0-9_]+", path.read_text()))


@pytest.mark.parametrize("path", [ALERTS, *DASHBOARDS], ids=lambda p: p.name)
def test_every_metric_referenced_exists(path: Path, exposed_metrics: set[str]) -> None:
    assert {"leadscore_consumer_lag", "leadscore_partition_failing_seconds"} <= exposed_metrics
    assert referenced_metrics(path) - exposed_metrics == set()


def test_the_dashboard_shows_what_operators_watch() -> None:
    (path,) = (p for p in DASHBOARDS if p.name == "leadscore-dashboard.json")
    assert referenced_metrics(path) >= {
        "leadscore_events_consumed_total", "leadscore_events_applied_total",
        "leadscore_events_duplicate_total", "leadscore_consumer_lag",
        "leadscore_apply_latency_seconds_bucket", "leadscore_end_to_end_latency_seconds_bucket",
        "leadscore_redis_roundtrip_seconds_bucket", "leadscore_events_dead_lettered_total",
        "leadscore_notifications_total", "leadscore_rule_awards_total",
        "leadscore_outbox_pending", "leadscore_batch_size_bucket",
    }


def test_the_dashboard_shows_notifications_by_score_group() -> None:
    """SPEC 10: leadscore_notifications_total has a group label ("" for the lead's own
    score) beside type, and a panel plots it by group."""
    assert metrics.NOTIFICATIONS._labelnames == ("type", "group")
    (path,) = (p for p in DASHBOARDS if p.name == "leadscore-dashboard.json")
    exprs = [target["expr"] for panel in all_panels(json.loads(path.read_text())["panels"])
             for target in panel.get("targets", [])]
    assert [e for e in exprs if "leadscore_notifications_total" in e and "by (group)" in e]


def parse_promql(expr: str) -> Any:
    try:
        return promql_parser.parse(expr)
    except ValueError as exc:
        pytest.fail(f"bad PromQL ({exc}): {expr}")


# --- alert rules --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_alerts_parse_and_tell_the_operator_what_to_do(alert_rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in alert_rules]
    assert len(names) == len(set(names))
    assert set(names) >= {"LeadscoreWorkerDown", "LeadscoreConsumerLagGrowing",
                          "LeadscoreDeadLetters", "LeadscoreNoEvents", "LeadscoreOutboxPending",
                          "LeadscorePartitionStalled"}
    for rule in alert_rules:
        parse_promql(rule["expr"])
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_alerts_watch_what_the_brief_promises(alert_rules: list[dict[str, Any]]) -> None:
    exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in alert_rules}
    assert "rate(leadscore_events_dead_lettered_total[5m])" in exprs["LeadscoreDeadLetters"]
    assert "by (reason)" in exprs["LeadscoreDeadLetters"]
    assert "rate(leadscore_events_consumed_total[10m])) == 0" in exprs["LeadscoreNoEvents"]
    assert "deriv(sum by (topic) (leadscore_consumer_lag)[10m:1m]) > 0" in exprs[
        "LeadscoreConsumerLagGrowing"]
    assert exprs["LeadscoreOutboxPending"] == "leadscore_outbox_pending > 0"
    assert exprs["LeadscorePartitionStalled"] == (
        "max by (topic, partition) (leadscore_partition_failing_seconds) > 60")
    assert exprs["LeadscoreModelRefused"] == (
        'increase(leadscore_model_reloads_total{outcome="refused"}[1h]) > 0')
    fors = {rule["alert"]: rule.get("for") for rule in alert_rules}
    assert (fors["LeadscoreNoEvents"], fors["LeadscoreOutboxPending"]) == ("15m", "5m")


def test_alerts_use_the_scrape_job_name(alert_rules: list[dict[str, Any]],
                                        prometheus_config: dict[str, Any]) -> None:
    jobs = {job for rule in alert_rules for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert jobs == {"leadscore"}
    assert jobs <= {job["job_name"] for job in prometheus_config["scrape_configs"]}
    assert jobs <= {job["job_name"] for job in k8s_scrape_jobs()}


# --- the Grafana dashboard ----------------------------------------------------------------------


def template_variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # panels inside collapsed rows


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_parse(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    variables = template_variables(dashboard)
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    # Grafana's interval macros and the dashboard's own variables, given a value that
    # PromQL accepts; a `$` left over is a variable the dashboard does not define.
    substitutes = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
    for name in variables:
        substitutes |= {f"${{{name}}}": ".*", f"${name}": ".*"}
    queries = 0
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            expr = target["expr"]
            for macro in sorted(substitutes, key=len, reverse=True):
                expr = expr.replace(macro, substitutes[macro])
            assert "$" not in expr, f"undefined variable in {target['expr']}"
            parse_promql(expr)
            queries += 1
    assert queries >= 10


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels_have_unique_ids_and_do_not_overlap(path: Path) -> None:
    panels = list(all_panels(json.loads(path.read_text())["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    boxes = [(p["title"], p["gridPos"]) for p in panels]
    for i, (title, a) in enumerate(boxes):
        assert a["x"] + a["w"] <= 24, title
        for other, b in boxes[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                     or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, f"{title!r} overlaps {other!r}"


# --- Kubernetes manifests -----------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, from every file of deploy/k8s."""
    found = {}
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def k8s_scrape_jobs() -> list[dict[str, Any]]:
    configmap = load_yaml(K8S / "prometheus-scrape.yaml")
    return list(yaml.safe_load(configmap["data"]["leadscore-scrape.yml"])["scrape_configs"])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == [p.name for p in k8s_files()]
    assert kustomization["namespace"] == "leadscore"


def test_manifests_validate_against_the_kubernetes_schemas(
        resources: dict[tuple[str, str], dict[str, Any]]) -> None:
    # strict: an unknown field (a typo) is an error, as `kubectl apply --validate=strict` has it.
    # A kind without a schema (a CRD) raises SchemaNotFoundError and fails the test too.
    version = kubernetes_validate.latest_version()
    for (kind, name), manifest in resources.items():
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            pytest.fail(f"{kind}/{name} is invalid for Kubernetes {version}: {where}: "
                        f"{exc.message}")


def test_every_resource_is_in_the_leadscore_namespace(
        resources: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert ("Namespace", "leadscore") in resources
    elsewhere = [key for key, manifest in resources.items() if key[0] != "Namespace"
                 and manifest["metadata"].get("namespace") != "leadscore"]
    assert elsewhere == []


@pytest.fixture(scope="module")
def deployment(resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return resources[("Deployment", "leadscore-worker")]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(worker)


def probe_port(worker: dict[str, Any], probe: str) -> int:
    """The port of an httpGet probe, a named port resolved to its number."""
    port = worker[probe]["httpGet"]["port"]
    named = {p["name"]: p["containerPort"] for p in worker["ports"] if "name" in p}
    return int(named[port]) if isinstance(port, str) else int(port)


def test_deployment_replicas_do_not_exceed_the_partitions(deployment: dict[str, Any]) -> None:
    assert 1 <= deployment["spec"]["replicas"] <= PARTITIONS


def test_a_rolling_update_keeps_the_old_pods_until_the_new_generation_is_active(
        deployment: dict[str, Any]) -> None:
    """New pods are unready while their generation rebuilds (docs/generations.md): no old
    pod may go before a new one is ready, and the rollout may last as long as a rebuild."""
    spec = deployment["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["progressDeadlineSeconds"] >= 3600


def test_deployment_probes_the_worker_web_port(deployment: dict[str, Any]) -> None:
    worker = container(deployment)
    (port,) = [p["containerPort"] for p in worker["ports"]]
    env = {item["name"]: item["value"] for item in worker["env"]}
    assert port == int(env["LEADSCORE_WEB_PORT"]) == WEB_PORT
    paths = {probe: (worker[probe]["httpGet"]["path"], probe_port(worker, probe))
             for probe in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert paths == {"livenessProbe": ("/healthz", port), "readinessProbe": ("/readyz", port),
                     "startupProbe": ("/healthz", port)}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (
        str(port), "/metrics")


def test_deployment_sets_resources(deployment: dict[str, Any]) -> None:
    resources = container(deployment)["resources"]
    assert resources["requests"] == {"cpu": "500m", "memory": "256Mi"}
    assert resources["limits"]["memory"] == "512Mi"


def test_deployment_environment_holds_only_real_settings(
        deployment: dict[str, Any], resources: dict[tuple[str, str], dict[str, Any]]) -> None:
    worker = container(deployment)
    names = [item["name"] for item in worker["env"]]
    (source,) = worker["envFrom"]
    secret = resources[("Secret", source["secretRef"]["name"])]
    names += list(secret["stringData"])
    assert [name for name in names if setting_field(name) is None] == []
    assert "LEADSCORE_REDIS_URL" in secret["stringData"]


def test_deployment_mounts_the_rules_where_the_settings_look(
        deployment: dict[str, Any], resources: dict[tuple[str, str], dict[str, Any]]) -> None:
    worker = container(deployment)
    env = {item["name"]: item["value"] for item in worker["env"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    rules_file = PurePosixPath(env["LEADSCORE_RULES"])
    (mount,) = [m for m in worker["volumeMounts"] if m["mountPath"] == str(rules_file.parent)]
    configmap = resources[("ConfigMap", volumes[mount["name"]]["configMap"]["name"])]
    assert rules_file.name in configmap["data"]


def test_rules_configmap_is_config_rules_yaml(
        resources: dict[tuple[str, str], dict[str, Any]]) -> None:
    configmap = resources[("ConfigMap", "leadscore-rules")]
    assert configmap["data"]["rules.yaml"] == (ROOT / "config" / "rules.yaml").read_text(), (
        "deploy/k8s/configmap-rules.yaml differs from config/rules.yaml: copy it over")


def test_deployment_runs_as_the_image_user_on_a_read_only_root(
        deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    worker = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == image_uid()
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    # Faust writes its data directory under the temp dir: /tmp must be writable.
    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = [m for m in worker["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_pdb_and_service_select_the_worker_pods(
        deployment: dict[str, Any], resources: dict[tuple[str, str], dict[str, Any]]) -> None:
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    (pdb,) = [r for (kind, _), r in resources.items() if kind == "PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1
    service = resources[("Service", "leadscore-worker")]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    worker = container(deployment)
    named = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert (port["name"], port["port"], named[port["targetPort"]]) == ("http", WEB_PORT, WEB_PORT)


def test_k8s_scrape_job_keeps_the_worker_pods(deployment: dict[str, Any]) -> None:
    (job,) = k8s_scrape_jobs()
    assert job["job_name"] == "leadscore"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in container(deployment)["ports"]}
    meta = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}": value
            for key, value in labels.items()}
    keeps = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]
    assert keeps
    for rule in keeps:
        if rule["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]:
            values = sorted(ports)
        else:
            values = [";".join(meta[label] for label in rule["source_labels"])]
        assert any(re.fullmatch(rule["regex"], value) for value in values), rule


def test_the_training_job_writes_the_model_the_workers_read(
        deployment: dict[str, Any], resources: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The CronJob trains under the workers' rules (so the rules_version matches) and
    writes the file their LEADSCORE_MODEL names, on the volume they mount."""
    job = resources[("CronJob", "leadscore-model-train")]
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (train,) = pod["containers"]
    args = train["args"]
    assert args[:3] == ["model", "train", "--topic"]
    out = PurePosixPath(args[args.index("--out") + 1])
    worker = container(deployment)
    env = {item["name"]: item["value"] for item in worker["env"]}
    assert PurePosixPath(env["LEADSCORE_MODEL"]) == out
    job_env = {item["name"]: item["value"] for item in train["env"]}
    assert job_env["LEADSCORE_RULES"] == env["LEADSCORE_RULES"]
    assert [setting_field(name) for name in job_env if setting_field(name) is None] == []

    def claim(spec: dict[str, Any], mounts: list[dict[str, Any]], path: PurePosixPath) -> str:
        (mount,) = [m for m in mounts if m["mountPath"] == str(path.parent)]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        return str(volume.get("persistentVolumeClaim", volume.get("configMap", {})).get(
            "claimName", volume.get("configMap", {}).get("name")))

    worker_pod = deployment["spec"]["template"]["spec"]
    assert claim(pod, train["volumeMounts"], out) == \
        claim(worker_pod, worker["volumeMounts"], out) == "leadscore-models"
    rules = PurePosixPath(env["LEADSCORE_RULES"])
    assert claim(pod, train["volumeMounts"], rules) == \
        claim(worker_pod, worker["volumeMounts"], rules) == "leadscore-rules"
    assert ("PersistentVolumeClaim", "leadscore-models") in resources
