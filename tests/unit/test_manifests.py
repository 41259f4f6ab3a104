"""Every KubeRay manifest in ``kuberay/`` is checked against the CRDs it will be applied to.

Three layers: the CRD's OpenAPI schema (types, required fields, enums), a strict pass for
unknown fields (the API server prunes them silently, so a typo would just vanish), and the
embedded Serve config (each app's ``args`` as :class:`ServingConfig`, its ``import_path``
importable). The monitoring manifests beside them are of kinds no KubeRay CRD serves: each kind
gets a schema of the fields WeLIP sets (``MONITORING_SCHEMAS``), checked as strictly.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

from deployments.agents import AgentsAppConfig
from welip.agents import resolve_agents
from welip.config import load_config
from welip.evaluation import SuiteConfig
from welip.gateway import ServingConfig
from welip.observability._logging import SERVE_LOGGING_CONFIG
from welip.rag import IngestConfig
from welip.training import AlignConfig, FinetuneConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERAY_DIR = REPO_ROOT / "kuberay"
CRD_DIR = REPO_ROOT.parent / "shared" / "kuberay-crds"
MANIFEST_FILES = sorted(KUBERAY_DIR.glob("*.yaml"))
# The args model of each Serve app builder; a new app adds its line here.
APP_ARGS: dict[str, type[BaseModel]] = {
    "deployments.gateway:build_app": ServingConfig,
    "deployments.agents:build_app": AgentsAppConfig,
}
# The config model of each training job script; a new job adds its line here.
TRAINING_JOBS: dict[str, type[FinetuneConfig] | type[AlignConfig]] = {
    "jobs/finetune.py": FinetuneConfig,
    "jobs/align.py": AlignConfig,
}

# The API server validates a resource's own ``metadata`` (ObjectMeta) itself; CRDs only say
# ``type: object``. These are the fields a manifest may set there.
_OBJECT_META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}

# The prometheus-operator fields the monitoring manifests may set (a subset of its CRDs).
_RELABELING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
        "action": {"type": "string"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "separator": {"type": "string"},
    },
}
_SELECTOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["expr"],
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": "string"},
        "for": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _resource_schema(spec: dict[str, Any], top: str = "spec") -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", top],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {**_OBJECT_META_SCHEMA, "required": ["name"]},
            top: spec,
        },
    }


# Manifests of kinds no KubeRay CRD serves, by (apiVersion, kind); a new kind adds its line.
MONITORING_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PodMonitor"): _resource_schema(
        {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _SELECTOR_SCHEMA,
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string"},
                            "scrapeTimeout": {"type": "string"},
                            "relabelings": {"type": "array", "items": _RELABELING_SCHEMA},
                        },
                    },
                },
            },
        }
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _resource_schema(
        {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {"type": "array", "minItems": 1, "items": _RULE_SCHEMA},
                        },
                    },
                }
            },
        }
    ),
    ("v1", "ConfigMap"): _resource_schema(
        {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}, top="data"
    ),
}

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD files are ~1 MB each


def load_documents(path: Path) -> list[dict[str, Any]]:
    """All non-empty YAML documents in ``path``."""
    with path.open() as f:
        return [doc for doc in yaml.load_all(f, Loader=_YAML_LOADER) if doc is not None]


def load_manifests() -> list[tuple[str, dict[str, Any]]]:
    """``(test id, resource)`` for every document in ``kuberay/*.yaml``."""
    return [
        (f"{path.name}#{i}", doc) for path in MANIFEST_FILES for i, doc in enumerate(load_documents(path))
    ]


MANIFESTS = load_manifests()


def kuberay_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in MANIFESTS if doc.get("apiVersion", "").startswith("ray.io/")]


def monitoring_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in MANIFESTS if not doc.get("apiVersion", "").startswith("ray.io/")]


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the CRD version that serves ``apiVersion``/``kind``."""
    if not CRD_DIR.is_dir():
        pytest.fail(f"KubeRay CRDs not found at {CRD_DIR}")
    group, _, version = api_version.rpartition("/")
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in load_documents(path):
            spec = crd.get("spec", {})
            if spec.get("group") != group or spec.get("names", {}).get("kind") != kind:
                continue
            for served in spec["versions"]:
                if served["name"] == version:
                    schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])
                    schema["properties"]["metadata"] = _OBJECT_META_SCHEMA
                    return normalize_schema(schema)
    pytest.fail(f"no CRD in {CRD_DIR} serves {kind} {api_version}")


def normalize_schema(node: Any) -> Any:
    """Translate Kubernetes' OpenAPI extensions into plain JSON Schema.

    ``x-kubernetes-int-or-string`` allows an integer or a string; ``nullable`` allows null.
    """
    if isinstance(node, list):
        return [normalize_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: normalize_schema(value) for key, value in node.items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def schema_errors(resource: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """JSON Schema violations, one line each."""
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{error.json_path}: {error.message}"
        for error in sorted(validator.iter_errors(resource), key=lambda e: e.json_path)
    ]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "$") -> Iterator[str]:
    """Paths of keys the schema does not declare, i.e. those Kubernetes would prune."""
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    properties = schema.get("properties", {})
    additional = schema.get("additionalProperties")
    for key, child in value.items():
        if key in properties:
            yield from unknown_fields(child, properties[key], f"{path}.{key}")
        elif isinstance(additional, dict):
            yield from unknown_fields(child, additional, f"{path}.{key}")
        elif additional is not True:
            yield f"{path}.{key}"


def resolve_import_path(import_path: str) -> Callable[..., Any]:
    """Import ``module:attr`` (or ``module.attr``) the way Ray Serve does."""
    module_name, sep, attr = import_path.partition(":")
    if not sep:
        module_name, _, attr = import_path.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def serve_config(resource: dict[str, Any]) -> dict[str, Any]:
    """The parsed ``spec.serveConfigV2`` of a RayService."""
    parsed = yaml.safe_load(resource["spec"]["serveConfigV2"])
    assert isinstance(parsed, dict), "serveConfigV2 is not a YAML mapping"
    return parsed


def rayservices() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in MANIFESTS if doc.get("kind") == "RayService"]


def check_resource(resource: dict[str, Any]) -> list[str]:
    """Schema violations and unknown fields of one resource."""
    schema = crd_schema(resource["apiVersion"], resource["kind"])
    unknown = [f"{path}: not in the CRD schema (pruned)" for path in unknown_fields(resource, schema)]
    return schema_errors(resource, schema) + unknown


def group_gpus(group: dict[str, Any]) -> int:
    """GPUs one pod of a worker group has (``nvidia.com/gpu`` limits)."""
    containers = group["template"]["spec"]["containers"]
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers)


def ids(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in items]


def test_kuberay_ships_a_rayservice() -> None:
    assert rayservices(), f"no RayService in {KUBERAY_DIR}"


@pytest.mark.parametrize(("name", "resource"), kuberay_manifests(), ids=ids(kuberay_manifests()))
def test_manifest_matches_crd(name: str, resource: dict[str, Any]) -> None:
    assert check_resource(resource) == []


def test_every_manifest_is_validated() -> None:
    kinds = {(doc.get("apiVersion"), doc.get("kind")) for _, doc in monitoring_manifests()}
    assert kinds <= set(MONITORING_SCHEMAS), f"add a schema for {kinds - set(MONITORING_SCHEMAS)}"
    assert set(MONITORING_SCHEMAS) <= kinds, "a schema no manifest uses"


@pytest.mark.parametrize(("name", "resource"), monitoring_manifests(), ids=ids(monitoring_manifests()))
def test_monitoring_manifest_matches_schema(name: str, resource: dict[str, Any]) -> None:
    schema = MONITORING_SCHEMAS[(resource["apiVersion"], resource["kind"])]
    unknown = [f"{path}: not in the schema" for path in unknown_fields(resource, schema)]
    assert schema_errors(resource, schema) + unknown == []
    assert resource["metadata"]["labels"]["app.kubernetes.io/name"] == "welip"


def test_podmonitor_scrapes_every_ray_pod_on_kuberays_metrics_port() -> None:
    """KubeRay labels every head and worker pod ``ray.io/is-ray-node: "yes"`` and gives its Ray
    container a port named ``metrics`` (8080), unless the template already names one."""
    (resource,) = [doc for _, doc in MANIFESTS if doc["kind"] == "PodMonitor"]
    assert resource["spec"]["selector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    assert [e["port"] for e in resource["spec"]["podMetricsEndpoints"]] == ["metrics"]
    for name, doc in kuberay_manifests():
        cluster = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
        for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
            ray_container = group["template"]["spec"]["containers"][0]
            ports = {p.get("name"): p["containerPort"] for p in ray_container.get("ports", [])}
            assert ports.get("metrics", 8080) == 8080, f"{name}: metrics port moved"
            assert 8080 not in {v for k, v in ports.items() if k != "metrics"}, f"{name}: 8080 taken"
            assert group.get("rayStartParams", {}).get("metrics-export-port", "8080") == "8080", name


def test_monitoring_schema_catches_a_typo() -> None:
    (resource,) = [doc for _, doc in MANIFESTS if doc["kind"] == "PodMonitor"]
    broken = copy.deepcopy(resource)
    broken["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    schema = MONITORING_SCHEMAS[(broken["apiVersion"], broken["kind"])]
    assert list(unknown_fields(broken, schema)) == ["$.spec.podMetricsEndpoints[0].intervall"]


@pytest.mark.parametrize(("name", "resource"), rayservices(), ids=ids(rayservices()))
def test_rayservice_serve_config(name: str, resource: dict[str, Any]) -> None:
    config = serve_config(resource)
    ServeDeploySchema.model_validate(config)
    for app in config["applications"]:
        assert app["import_path"] in APP_ARGS, f"{app['import_path']}: add its args model to APP_ARGS"
        target = resolve_import_path(app["import_path"])
        assert inspect.isfunction(target), f"{app['import_path']} is not a function"
        assert target.__name__ == "build_app"
        args = APP_ARGS[app["import_path"]].model_validate(app.get("args", {}))
        if isinstance(args, AgentsAppConfig):
            # The working_dir is the repository: the agent files it names exist and validate.
            assert resolve_agents(args, REPO_ROOT)


@pytest.mark.parametrize(("name", "resource"), rayservices(), ids=ids(rayservices()))
def test_rayservice_logs_json_lines(name: str, resource: dict[str, Any]) -> None:
    """As the local Serve configs: JSON lines with the logger's name, no Serve access log."""
    config = serve_config(resource)
    assert config.get("logging_config") == SERVE_LOGGING_CONFIG
    assert all("logging_config" not in app for app in config["applications"]), "one logging config for all"


@pytest.mark.parametrize(("name", "resource"), rayservices(), ids=ids(rayservices()))
def test_rayservice_cluster_matches_app(name: str, resource: dict[str, Any]) -> None:
    """The cluster runs the pinned Ray and has GPUs enough for every engine at full scale."""
    cluster = resource["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert f":{ray.__version__}" in container["image"], container["image"]
    gpus_available = sum(group_gpus(group) * group["maxReplicas"] for group in groups[1:])
    gpus_needed = sum(
        model.gpus_per_replica * (model.autoscaling.max_replicas if model.autoscaling else model.num_replicas)
        for app in serve_config(resource)["applications"]
        if APP_ARGS.get(app["import_path"]) is ServingConfig
        for model in ServingConfig.model_validate(app["args"]).models
        if model.accelerator == "gpu"
    )
    assert gpus_needed <= gpus_available


def test_strict_check_catches_a_typo() -> None:
    _, resource = rayservices()[0]
    broken = copy.deepcopy(resource)
    head = broken["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["rayStartParms"] = head.pop("rayStartParams")
    # Plain JSON Schema accepts it (the CRD does not forbid extra keys); the strict pass must not.
    assert schema_errors(broken, crd_schema(broken["apiVersion"], broken["kind"])) == []
    assert check_resource(broken) == [
        "$.spec.rayClusterConfig.headGroupSpec.rayStartParms: not in the CRD schema (pruned)"
    ]


def test_strict_check_catches_unknown_metadata_and_container_fields() -> None:
    _, resource = rayservices()[0]
    broken = copy.deepcopy(resource)
    broken["metadata"]["label"] = {"a": "b"}
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imag"] = "x"
    head_container = "$.spec.rayClusterConfig.headGroupSpec.template.spec.containers[0]"
    assert check_resource(broken) == [
        "$.metadata.label: not in the CRD schema (pruned)",
        f"{head_container}.imag: not in the CRD schema (pruned)",
    ]


@pytest.mark.parametrize(
    ("quantity", "ok"), [(1, True), ("1", True), ("500m", True), (True, False), ([1], False)]
)
def test_int_or_string_quantities(quantity: object, ok: bool) -> None:
    _, resource = rayservices()[0]
    changed = copy.deepcopy(resource)
    worker = changed["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    worker["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = quantity
    assert (check_resource(changed) == []) is ok


def test_schema_errors_report_wrong_types() -> None:
    _, resource = rayservices()[0]
    broken = copy.deepcopy(resource)
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    errors = check_resource(broken)
    assert len(errors) == 1
    assert "num-cpus" in errors[0]
    assert "is not of type 'string'" in errors[0]


@pytest.mark.parametrize(
    ("value", "ok"), [(1, True), ("1", True), (None, False), (True, False), (1.5, False)]
)
def test_normalize_schema_int_or_string_without_any_of(value: object, ok: bool) -> None:
    schema = normalize_schema({"type": "object", "properties": {"q": {"x-kubernetes-int-or-string": True}}})
    assert (schema_errors({"q": value}, schema) == []) is ok


def test_normalize_schema_nullable() -> None:
    schema = normalize_schema({"type": "object", "properties": {"s": {"type": "string", "nullable": True}}})
    assert schema_errors({"s": None}, schema) == []
    assert schema_errors({"s": 1}, schema) != []


def rayjobs() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in MANIFESTS if doc.get("kind") == "RayJob"]


def test_kuberay_ships_an_evaluation_rayjob() -> None:
    assert any("jobs/evaluate.py" in doc["spec"]["entrypoint"] for _, doc in rayjobs())


@pytest.mark.parametrize(("name", "resource"), rayjobs(), ids=ids(rayjobs()))
def test_rayjob_entrypoint_runs_a_shipped_job_with_a_valid_config(
    name: str, resource: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entrypoint names a job script of this repository, and its config (with the
    entrypoint's overrides) validates; the cluster runs the pinned Ray and ends with the job."""
    spec = resource["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"], "the job's code travels as the working_dir"
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and (REPO_ROOT / argv[1]).is_file(), argv[:2]
    monkeypatch.chdir(REPO_ROOT)
    if argv[1] == "jobs/evaluate.py":
        config_at = argv.index("--config")
        overrides = [a for a in argv[2:] if "=" in a]
        load_config(SuiteConfig, argv[config_at + 1], overrides)
    if argv[1] == "jobs/ingest.py":
        load_config(IngestConfig, argv[argv.index("--config") + 1], [a for a in argv[2:] if "=" in a])
    if argv[1] in TRAINING_JOBS:
        config_at = argv.index("--config")
        overrides = [a for a in argv[2:] if "=" in a]
        load_config(TRAINING_JOBS[argv[1]], argv[config_at + 1], overrides)
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
        for container in group["template"]["spec"]["containers"]:
            assert f":{ray.__version__}" in container["image"], container["image"]


def group_cpus(group: dict[str, Any]) -> float:
    """CPUs one pod of a worker group has (``cpu`` limits: "4" or "500m")."""
    total = 0.0
    for container in group["template"]["spec"]["containers"]:
        cpu = str(container.get("resources", {}).get("limits", {}).get("cpu", "0"))
        total += float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return total


def rayjob_config(resource: dict[str, Any]) -> FinetuneConfig | AlignConfig:
    """The validated config a training RayJob's entrypoint runs, overrides applied."""
    argv = shlex.split(resource["spec"]["entrypoint"])
    overrides = [a for a in argv[2:] if "=" in a]
    return load_config(TRAINING_JOBS[argv[1]], REPO_ROOT / argv[argv.index("--config") + 1], overrides)


def training_rayjobs(script: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in rayjobs() if shlex.split(doc["spec"]["entrypoint"])[1] == script]


@pytest.mark.parametrize("script", sorted(TRAINING_JOBS))
def test_kuberay_ships_a_training_rayjob(script: str) -> None:
    assert training_rayjobs(script), f"no RayJob runs {script}"


@pytest.mark.parametrize("script", sorted(TRAINING_JOBS))
def test_training_rayjob_workers_fit_the_config(script: str) -> None:
    """Ray Train (or VeRL) gets the workers the config asks for, with GPUs where it trains on GPUs."""
    for name, resource in training_rayjobs(script):
        cfg = rayjob_config(resource)
        cluster = resource["spec"]["rayClusterSpec"]
        workers = cluster.get("workerGroupSpecs", [])
        gpus = sum(group_gpus(group) * group["maxReplicas"] for group in workers)
        if cfg.use_gpu:
            assert gpus >= cfg.num_workers, f"{name}: {cfg.num_workers} GPU workers, {gpus} GPUs"
        else:
            slots = sum(
                int(group_cpus(group) // cfg.cpus_per_worker) * group["maxReplicas"] for group in workers
            )
            assert slots >= cfg.num_workers, f"{name}: {cfg.num_workers} workers, room for {slots}"
        runtime_env = yaml.safe_load(resource["spec"]["runtimeEnvYAML"])
        assert runtime_env["env_vars"]["WELIP_STORAGE_URL"].startswith("s3://"), (
            f"{name}: checkpoints and adapters need storage every node and the engines reach"
        )


def test_align_rayjob_runs_verl_on_gpus() -> None:
    (name, resource), *_ = training_rayjobs("jobs/align.py")
    cfg = rayjob_config(resource)
    assert isinstance(cfg, AlignConfig)
    assert cfg.rl_backend == "verl" and cfg.use_gpu
    runtime_env = yaml.safe_load(resource["spec"]["runtimeEnvYAML"])
    assert any(str(p).startswith("verl") for p in runtime_env["pip"]), f"{name}: verl is not installed"


def test_ingest_rayjob_reads_and_writes_s3_and_fits_its_embedding_actors() -> None:
    """The ingestion RayJob's documents and table are on S3 (every node reaches them), and its
    workers have room for the embedding actors the config asks for."""
    jobs = [doc for _, doc in rayjobs() if shlex.split(doc["spec"]["entrypoint"])[1] == "jobs/ingest.py"]
    assert jobs, "no RayJob runs jobs/ingest.py"
    for resource in jobs:
        spec = resource["spec"]
        argv = shlex.split(spec["entrypoint"])
        cfg = load_config(
            IngestConfig, REPO_ROOT / argv[argv.index("--config") + 1], [a for a in argv[2:] if "=" in a]
        )
        assert cfg.documents.startswith("s3://")
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert (cfg.storage_url or runtime_env["env_vars"]["WELIP_STORAGE_URL"]).startswith("s3://")
        assert any(str(p).startswith(cfg.embedding_source) for p in runtime_env["pip"])
        workers = spec["rayClusterSpec"].get("workerGroupSpecs", [])
        cpus = sum(group_cpus(group) * group["maxReplicas"] for group in workers)
        assert cpus >= cfg.embed_concurrency * cfg.embed_num_cpus + 0.25


def _ray_containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource["spec"]
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec")
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def test_every_ray_container_takes_the_optional_tracing_configmap() -> None:
    (otel,) = [r for name, r in load_manifests() if name.startswith("otel-config.yaml")]
    assert otel["kind"] == "ConfigMap" and all(key.startswith("OTEL_") for key in otel["data"])
    clusters = [r for _, r in load_manifests() if r["kind"] in ("RayService", "RayJob")]
    assert clusters
    for resource in clusters:
        for container in _ray_containers(resource):
            refs = [e["configMapRef"] for e in container.get("envFrom", []) if "configMapRef" in e]
            assert {"name": otel["metadata"]["name"], "optional": True} in refs, (
                resource["metadata"]["name"],
                container["name"],
            )
