"""The Helm chart (``kuberay/charts/welip``), rendered offline by Helm itself (``tests/chart.py``).

Every profile renders; every object validates strictly (unknown fields refused, as the API server
would prune them silently): Ray's kinds against KubeRay's CRDs, monitoring, Argo CD, cert-manager
and Gateway API kinds against their CRDs (``../shared/``), Kubernetes' own kinds with
``kubernetes-validate`` at the chart's lowest ``kubeVersion``. Then what a user would notice: the
Serve apps' args validate as WeLIP's models, gateway replicas take effect, jobs run shipped
configs, pods run as non-root with the Ray token on, secrets come only by reference, the
NetworkPolicies keep Ray's ports inside the cluster, and the air-gapped profile names no host
outside it.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

from deployments.agents import AgentsAppConfig
from tests.chart import (
    CHART_DIR,
    NAMESPACE,
    PROFILES,
    REPO_ROOT,
    entrypoint_of,
    objects_of,
    render_chart,
    serve_config_of,
    user_values,
)
from tests.unit.test_dashboards import DASHBOARD_FILES, run_promtool
from welip.agents import AgentConfig, resolve_agents
from welip.config import load_config
from welip.evaluation import SuiteConfig
from welip.gateway import ServingConfig
from welip.gateway._config import GatewayConfig
from welip.observability._logging import SERVE_LOGGING_CONFIG
from welip.rag import IngestConfig
from welip.serving import EmbeddingModelConfig, ModelConfig
from welip.training import AlignConfig, FinetuneConfig

VALUES_FILES = sorted([*CHART_DIR.glob("values*.yaml"), *(CHART_DIR / "ci").glob("*.yaml")])
ARGOCD_DIR = REPO_ROOT / "kuberay" / "argocd"
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yaml"


def _shared_dir() -> Path:
    """``shared/`` beside the checkout (a worktree sits one level deeper than the main checkout)."""
    for candidate in (REPO_ROOT.parent / "shared", REPO_ROOT.parents[1] / "shared"):
        if (candidate / "kuberay-crds").is_dir():
            return candidate
    pytest.fail(f"no shared/kuberay-crds beside {REPO_ROOT}")


CRD_DIRS = [_shared_dir() / "kuberay-crds", _shared_dir() / "k8s-crds"]
# The args model of each Serve app builder; a new app adds its line here.
APP_ARGS: dict[str, type[BaseModel]] = {
    "deployments.gateway:build_app": ServingConfig,
    "deployments.agents:build_app": AgentsAppConfig,
}
# The config model of each job script the chart runs; a new job adds its line here.
JOB_CONFIGS: dict[str, type[BaseModel]] = {
    "ingest": IngestConfig,
    "evaluate": SuiteConfig,
    "finetune": FinetuneConfig,
    "align": AlignConfig,
}
# Kubernetes' own API groups (validated by kubernetes-validate); everything else needs a CRD.
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io"}
RAY_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001, "dashboard-agent": 52365}

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD files are ~1 MB each

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


# -- strict schema checks ---------------------------------------------------------------------


def load_documents(path: Path) -> list[dict[str, Any]]:
    """All non-empty YAML documents in ``path``."""
    with path.open() as f:
        return [doc for doc in yaml.load_all(f, Loader=_YAML_LOADER) if doc is not None]


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the CRD version that serves ``apiVersion``/``kind``."""
    group, _, version = api_version.rpartition("/")
    for crd_dir in CRD_DIRS:
        for path in sorted(crd_dir.glob("*.yaml")):
            for crd in load_documents(path):
                spec = crd.get("spec", {})
                if spec.get("group") != group or spec.get("names", {}).get("kind") != kind:
                    continue
                for served in spec["versions"]:
                    if served["name"] == version:
                        schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])
                        schema["properties"]["metadata"] = _OBJECT_META_SCHEMA
                        return normalize_schema(schema)
    pytest.fail(f"no CRD in {CRD_DIRS} serves {kind} {api_version}")


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


def check_crd_resource(resource: dict[str, Any]) -> list[str]:
    """Schema violations and unknown fields of a custom resource."""
    schema = crd_schema(resource["apiVersion"], resource["kind"])
    unknown = [f"{path}: not in the CRD schema (pruned)" for path in unknown_fields(resource, schema)]
    return schema_errors(resource, schema) + unknown


@functools.cache
def chart_metadata() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    return data


def min_kube_version() -> str:
    """The lowest Kubernetes version the chart declares (``kubeVersion: ">=1.29.0-0"`` -> ``1.29.0``)."""
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", chart_metadata()["kubeVersion"])
    assert match, chart_metadata()["kubeVersion"]
    return match.group(1)


def check_resource(resource: dict[str, Any]) -> list[str]:
    """Every problem the API server would have with ``resource`` (or silently prune from it)."""
    group = resource["apiVersion"].rpartition("/")[0]
    if group not in BUILTIN_GROUPS:
        return check_crd_resource(resource)
    try:
        kubernetes_validate.validate(resource, min_kube_version(), strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    return []


# -- rendering ----------------------------------------------------------------------------------


@functools.cache
def _rendered(profile: str, jobs: bool) -> str:
    values = {"jobs": {verb: {"enabled": True, "runId": "r1"} for verb in JOB_CONFIGS}} if jobs else None
    return json.dumps(render_chart(PROFILES[profile], values))


def rendered(profile: str, *, jobs: bool = False) -> list[dict[str, Any]]:
    """The profile's objects (a fresh copy); with ``jobs``, every RayJob enabled (run id r1)."""
    objects: list[dict[str, Any]] = json.loads(_rendered(profile, jobs))
    return objects


def serve_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    parsed = yaml.safe_load(serve_config_of(objects))
    assert isinstance(parsed, dict), "serveConfigV2 is not a YAML mapping"
    return parsed


def app_args(objects: list[dict[str, Any]], import_path: str) -> dict[str, Any]:
    (app,) = [a for a in serve_config(objects)["applications"] if a["import_path"] == import_path]
    args: dict[str, Any] = app["args"]
    return args


def ray_clusters(obj: dict[str, Any]) -> dict[str, Any]:
    cluster: dict[str, Any] = obj["spec"].get("rayClusterConfig") or obj["spec"]["rayClusterSpec"]
    return cluster


def groups(obj: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = ray_clusters(obj)
    return [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, pod template)`` of every Ray pod and RayJob submitter the objects make."""
    for obj in objects:
        if obj["kind"] not in ("RayService", "RayJob"):
            continue
        for group in groups(obj):
            yield f"{obj['metadata']['name']}/{group.get('groupName', 'head')}", group["template"]
        if obj["kind"] == "RayJob":
            yield f"{obj['metadata']['name']}/submitter", obj["spec"]["submitterPodTemplate"]


def group_resources(group: dict[str, Any], name: str) -> float:
    """One pod's limit of ``name`` (cpu "4" or "500m", nvidia.com/gpu)."""
    total = 0.0
    for container in group["template"]["spec"]["containers"]:
        value = str(container.get("resources", {}).get("limits", {}).get(name, "0"))
        total += float(value[:-1]) / 1000 if value.endswith("m") else float(value)
    return total


def strings(value: Any) -> Iterator[str]:
    """Every string in a nested structure, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def job_argv(job: dict[str, Any]) -> list[str]:
    return shlex.split(job["spec"]["entrypoint"])


def job_config(job: dict[str, Any]) -> BaseModel:
    """The validated config a RayJob's entrypoint runs, its overrides applied."""
    argv = job_argv(job)
    verb = job["metadata"]["labels"]["app.kubernetes.io/component"]
    overrides = [a for a in argv[2:] if "=" in a]
    return load_config(JOB_CONFIGS[verb], REPO_ROOT / argv[argv.index("--config") + 1], overrides)


def rayjob(objects: list[dict[str, Any]], verb: str) -> dict[str, Any]:
    (job,) = [
        j
        for j in objects_of(objects, "RayJob")
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == verb
    ]
    return job


# -- the chart as a whole -----------------------------------------------------------------------


def test_chart_version_is_the_package_version() -> None:
    """The chart, its appVersion (the image tag) and the package move together."""
    package = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart_metadata()["version"] == package
    assert chart_metadata()["appVersion"] == package
    (service,) = objects_of(rendered("default"), "RayService")
    images = {c["image"] for g in groups(service) for c in g["template"]["spec"]["containers"]}
    assert images == {f"welip/welip:{package}"}


def test_the_chart_replaces_the_plain_manifests() -> None:
    """One source: no hand-kept manifests beside the chart."""
    assert sorted(p.name for p in (REPO_ROOT / "kuberay").glob("*.y*ml")) == []


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_helm_lint_is_clean(profile: str) -> None:
    report = helm.lint(
        CHART_DIR,
        user_values(PROFILES[profile]),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{min_kube_version()}",
    )
    assert report["errors"] == []
    # Severity 1 is information (Helm suggests an icon); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_object_validates_strictly(profile: str) -> None:
    objects = rendered(profile, jobs=True)
    problems = {f"{o['kind']}/{o['metadata']['name']}": check_resource(o) for o in objects}
    assert {name: found for name, found in problems.items() if found} == {}
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "welip", obj["metadata"]["name"]


def test_profiles_render_what_they_promise() -> None:
    kinds = {profile: {o["kind"] for o in rendered(profile)} for profile in PROFILES}
    assert {"RayService", "NetworkPolicy", "ServiceAccount", "ConfigMap"} <= kinds["default"]
    assert {"Ingress", "Certificate", "PodMonitor", "PrometheusRule", "PodDisruptionBudget"} <= kinds["gpu"]
    assert {"HTTPRoute", "PodMonitor"} <= kinds["airgapped"]
    assert "Ingress" not in kinds["airgapped"]
    assert all("RayJob" not in found for found in kinds.values() if found is not kinds["two-node"])
    assert "Secret" not in set().union(*kinds.values()), "Secrets are the user's, by reference"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda o: o["spec"]["rayClusterConfig"]["headGroupSpec"].update(rayStartParms={}), "rayStartParms"),
        (
            lambda o: o["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][
                0
            ].update(imag="x"),
            "imag",
        ),
        (lambda o: o["metadata"].update(label={"a": "b"}), "label"),
    ],
)
def test_strict_check_catches_a_typo_in_a_custom_resource(
    mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    (service,) = objects_of(rendered("default"), "RayService")
    mutate(service)
    problems = check_resource(service)
    assert len(problems) == 1 and problems[0].endswith(f".{expected}: not in the CRD schema (pruned)"), (
        problems
    )


def test_strict_check_catches_a_typo_in_kubernetes_kinds_and_monitoring_crds() -> None:
    objects = rendered("gpu")
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    policy["spec"]["podSelecter"] = policy["spec"].pop("podSelector")
    assert check_resource(policy) != []
    (monitor,) = objects_of(objects, "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    assert check_resource(monitor) == [
        "$.spec.podMetricsEndpoints[0].intervall: not in the CRD schema (pruned)"
    ]
    (service,) = objects_of(objects, "RayService")
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert [p for p in check_resource(service) if "is not of type 'string'" in p]


# -- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"imagee": {}}, "imagee"),
        ({"serve": {"gatway": {}}}, "gatway"),
        ({"serve": {"gateway": {"args": {"gateway": {"num_replica": 2}}}}}, "num_replica"),
        ({"serve": {"gateway": {"args": {"models": [{"model_id": "m", "source": "s", "gpu": 1}]}}}}, "gpu"),
        (
            {
                "cluster": {
                    "workerGroups": [
                        {
                            "groupName": "g",
                            "replicas": 1,
                            "minReplicas": 1,
                            "maxReplicas": 1,
                            "resources": {"cpu": "1", "memory": "1Gi"},
                            "gpu": 1,
                        }
                    ]
                }
            },
            "gpu",
        ),
        ({"jobs": {"ingest": {"overides": {}}}}, "overides"),
        ({"networkPolicy": {"enable": False}}, "enable"),
        ({"rayAuth": {"mode": "off"}}, "mode"),
    ],
)
def test_a_values_typo_is_refused(values: dict[str, Any], key: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(key)):
        render_chart([], values)


@pytest.mark.parametrize(
    ("schema_path", "model"),
    [
        (("serve", "gateway", "args"), ServingConfig),
        (("serve", "gateway", "args", "gateway"), GatewayConfig),
        (("serve", "gateway", "args", "models", "items"), ModelConfig),
        (("serve", "gateway", "args", "embeddings", "items"), EmbeddingModelConfig),
        (("serve", "agents", "args"), AgentsAppConfig),
        (("serve", "agents", "args", "agents", "items", "anyOf", 0), AgentConfig),
    ],
)
def test_values_schema_knows_the_apps_fields(
    schema_path: tuple[str | int, ...], model: type[BaseModel]
) -> None:
    """The schema refuses unknown keys of the Serve apps' args: its keys are the models' fields."""
    node: Any = json.loads((CHART_DIR / "values.schema.json").read_text())
    for step in schema_path:
        node = node[step] if isinstance(step, int) or step in ("items", "anyOf") else node["properties"][step]
    assert node["additionalProperties"] is False
    assert set(node["properties"]) == set(model.model_fields)


_SECRET_LIKE = re.compile(
    r"wlp_[0-9a-f]{8,}|\b[0-9a-f]{32,}\b|AKIA[0-9A-Z]{16}|-----BEGIN|://[^/\s:@]+:[^/\s@]+@|\beyJ[A-Za-z0-9_-]{10,}"
)


@pytest.mark.parametrize(
    "path", VALUES_FILES, ids=[p.relative_to(CHART_DIR).as_posix() for p in VALUES_FILES]
)
def test_no_secret_values_in_values_files(path: Path) -> None:
    """Keys, passwords and tokens live in Secrets the user creates; values only name them."""
    values = yaml.safe_load(path.read_text()) or {}
    for value in strings(values):
        assert not _SECRET_LIKE.search(value), f"{path.name}: {value!r} looks like a secret"

    def walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, str(k))
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, key)
        else:
            yield key, node

    for key, value in walk(values):
        if (
            re.search(r"(?i)password|secret|token|api_?key|credential", key)
            and isinstance(value, str)
            and value
        ):
            # A Secret's name or an environment variable's: never the value itself.
            assert re.fullmatch(r"[a-z0-9-]+|[A-Z][A-Z0-9_]*", value), f"{path.name}: {key}: {value!r}"


def test_the_values_files_name_every_secret_key_the_chart_documents() -> None:
    """The Secrets are referenced whole (envFrom), never inlined as env values."""
    for profile in PROFILES:
        for where, template in pod_templates(rendered(profile, jobs=True)):
            for container in template["spec"]["containers"]:
                for name, value in container_env(container).items():
                    if re.search(r"KEY|TOKEN|PASSWORD|SECRET", name):
                        assert not isinstance(value, str), f"{profile} {where}: {name} has a literal value"


# -- the RayService -------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_serve_config_validates(profile: str) -> None:
    """The serveConfigV2 is a Serve config whose apps import and whose args are WeLIP's models."""
    config = serve_config(rendered(profile))
    ServeDeploySchema.model_validate(config)
    assert config["logging_config"] == SERVE_LOGGING_CONFIG
    for app in config["applications"]:
        assert app["import_path"] in APP_ARGS, f"{app['import_path']}: add its args model to APP_ARGS"
        module_name, _, attr = app["import_path"].partition(":")
        target = getattr(importlib.import_module(module_name), attr)
        assert inspect.isfunction(target) and target.__name__ == "build_app"
        args = APP_ARGS[app["import_path"]].model_validate(app["args"])
        if isinstance(args, AgentsAppConfig):
            assert resolve_agents(args, REPO_ROOT)
        assert "runtime_env" not in app, "the image holds the code and its dependencies"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_nothing_is_downloaded_or_installed_at_pod_start(profile: str) -> None:
    objects = rendered(profile, jobs=True)
    texts = [*strings(objects), *strings(serve_config(objects))]
    assert not [t for t in texts if t in ("working_dir", "pip", "runtimeEnvYAML", "uv", "conda")]
    assert not [t for t in texts if re.search(r"archive/refs|\.zip\b|pip install", t)]


def test_gateway_replicas_take_effect() -> None:
    """More than one gateway replica makes the gateway standalone, where num_replicas applies."""
    one = ServingConfig.model_validate(app_args(rendered("default"), "deployments.gateway:build_app"))
    assert one.gateway.num_replicas == 1 and one.gateway.placement == "in_engine"
    gpu = ServingConfig.model_validate(app_args(rendered("gpu"), "deployments.gateway:build_app"))
    assert gpu.gateway.num_replicas == 2 and gpu.gateway.placement == "standalone"
    three = render_chart([], {"serve": {"gateway": {"args": {"gateway": {"num_replicas": 3}}}}})
    assert (
        ServingConfig.model_validate(app_args(three, "deployments.gateway:build_app")).gateway.placement
        == "standalone"
    )
    with pytest.raises(helm.HelmRenderError, match="needs placement standalone"):
        render_chart(
            [], {"serve": {"gateway": {"args": {"gateway": {"num_replicas": 2, "placement": "in_engine"}}}}}
        )


def test_batch_jobs_go_to_this_clusters_jobs_api_and_send_through_the_local_proxy() -> None:
    objects = rendered("default")
    (service,) = [o for o in objects if o["kind"] == "RayService"]
    batches = ServingConfig.model_validate(app_args(objects, "deployments.gateway:build_app")).gateway.batches
    port = serve_config(objects)["http_options"]["port"]
    # KubeRay names the head Service <RayService>-head-svc, in the release's namespace.
    assert batches.ray_dashboard_url == f"http://{service['metadata']['name']}-head-svc.{NAMESPACE}.svc:8265"
    assert batches.gateway_url == f"http://127.0.0.1:{port}"
    mine = {"ray_dashboard_url": "http://jobs.example:8265"}
    given = render_chart([], {"serve": {"gateway": {"args": {"gateway": {"batches": mine}}}}})
    gateway = ServingConfig.model_validate(app_args(given, "deployments.gateway:build_app")).gateway
    assert gateway.batches.ray_dashboard_url == "http://jobs.example:8265"


def test_agents_share_the_gateways_auth_and_reach_it_through_the_local_proxy() -> None:
    for profile in ("default", "gpu", "two-node"):
        objects = rendered(profile)
        gateway = app_args(objects, "deployments.gateway:build_app")["gateway"]
        agents = AgentsAppConfig.model_validate(app_args(objects, "deployments.agents:build_app"))
        assert agents.trust.auth.model_dump() == GatewayConfig.model_validate(gateway).auth.model_dump()
        port = serve_config(objects)["http_options"]["port"]
        assert {a.llm.base_url for a in resolve_agents(agents)} == {f"http://127.0.0.1:{port}/v1"}
        assert agents.store.embeddings_base_url == f"http://127.0.0.1:{port}/v1"
    # Whole agents app off: one app.
    (app,) = serve_config(render_chart([], {"serve": {"agents": {"enabled": False}}}))["applications"]
    assert app["import_path"] == "deployments.gateway:build_app"


def test_default_assistants_are_the_shipped_agent_configs() -> None:
    """The chart inlines configs/agents/*.yaml (so their base_url follows the Serve port): kept equal."""
    inline = {
        a["assistant_id"]: a
        for a in yaml.safe_load((CHART_DIR / "values.yaml").read_text())["serve"]["agents"]["args"]["agents"]
    }
    for path in sorted((REPO_ROOT / "configs" / "agents").glob("*.yaml")):
        shipped = AgentConfig.model_validate(yaml.safe_load(path.read_text())).model_dump(
            exclude={"llm": {"base_url"}}
        )
        assert (
            AgentConfig.model_validate(inline[shipped["assistant_id"]]).model_dump(
                exclude={"llm": {"base_url"}}
            )
            == shipped
        ), path.name


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_rayservice_cluster(profile: str) -> None:
    """The pinned Ray, an idle head, token auth, and GPUs enough for every engine at full scale."""
    (service,) = objects_of(rendered(profile), "RayService")
    cluster = ray_clusters(service)
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["authOptions"] == {"mode": "token"}
    gpus = sum(group_resources(g, "nvidia.com/gpu") * g["maxReplicas"] for g in cluster["workerGroupSpecs"])
    needed = sum(
        m.gpus_per_replica * (m.autoscaling.max_replicas if m.autoscaling else m.num_replicas)
        for m in ServingConfig.model_validate(app_args([service], "deployments.gateway:build_app")).models
        if m.accelerator == "gpu"
    )
    assert needed <= gpus
    if needed:
        model = ServingConfig.model_validate(app_args([service], "deployments.gateway:build_app")).models[0]
        assert model.engine_kwargs["tensor_parallel_size"] == model.gpus_per_replica > 1
        assert all(
            group_resources(g, "nvidia.com/gpu") % model.gpus_per_replica == 0
            for g in cluster["workerGroupSpecs"]
        )


def test_ray_token_secret_is_referenced_when_given() -> None:
    objects = render_chart(
        [],
        {
            "rayAuth": {"existingSecret": "welip-ray-token"},
            "jobs": {"ingest": {"enabled": True, "runId": "x"}},
        },
    )
    for obj in objects:
        if obj["kind"] in ("RayService", "RayJob"):
            assert ray_clusters(obj)["authOptions"] == {"mode": "token", "secretName": "welip-ray-token"}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_pods_run_as_non_root_without_privileges(profile: str) -> None:
    for where, template in pod_templates(rendered(profile, jobs=True)):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == 1000, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context["seccompProfile"]["type"] == "RuntimeDefault", where
            assert container["image"].startswith("welip/") or profile == "airgapped", where


def test_pod_disruption_budgets_select_the_serving_pods() -> None:
    objects = rendered("gpu")
    (service,) = objects_of(objects, "RayService")
    head_labels = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    budgets = {b["metadata"]["name"]: b["spec"] for b in objects_of(objects, "PodDisruptionBudget")}
    # The HA stores' own budgets: one pod at a time keeps Sentinel's quorum and MinIO's erasure set.
    for store in ("welip-redis", "welip-minio"):
        assert budgets.pop(store)["maxUnavailable"] == 1
    assert budgets["welip-head"]["minAvailable"] == 1
    assert budgets["welip-gpu"]["minAvailable"] == 1
    for spec in budgets.values():
        selector = spec["selector"]["matchLabels"]
        assert selector["welip.io/ray-cluster"] == head_labels["welip.io/ray-cluster"]
        assert set(selector) - {"welip.io/ray-cluster"} <= {"ray.io/node-type", "ray.io/group"}  # KubeRay's


# -- RayJobs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("verb", sorted(JOB_CONFIGS))
def test_rayjob_runs_a_shipped_job_with_a_valid_config(profile: str, verb: str) -> None:
    """The entrypoint is `python jobs/<verb>.py --config <shipped> key=value ...`, valid with overrides."""
    job = rayjob(rendered(profile, jobs=True), verb)
    assert job["metadata"]["name"] == f"welip-{verb}-r1"
    argv = job_argv(job)
    assert argv[:2] == ["python", f"jobs/{verb}.py"] and (REPO_ROOT / argv[1]).is_file()
    job_config(job)
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert (
        spec["submitterPodTemplate"]["spec"]["containers"][0]["image"]
        == ray_clusters(job)["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert ray_clusters(job)["rayVersion"] == ray.__version__


def test_a_job_needs_a_run_id() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"jobs\.ingest\.runId is required"):
        render_chart([], {"jobs": {"ingest": {"enabled": True}}})


@pytest.mark.parametrize("profile", ["default", "gpu", "airgapped"])
def test_rayjob_workers_fit_the_config(profile: str) -> None:
    """Ray Train, VeRL and the embedding actors get the slots their configs ask for."""
    objects = rendered(profile, jobs=True)
    for verb in ("finetune", "align"):
        job = rayjob(objects, verb)
        cfg = job_config(job)
        assert isinstance(cfg, FinetuneConfig | AlignConfig)
        workers = ray_clusters(job)["workerGroupSpecs"]
        if cfg.use_gpu:
            assert (
                sum(group_resources(g, "nvidia.com/gpu") * g["maxReplicas"] for g in workers)
                >= cfg.num_workers
            )
        else:
            slots = sum(
                int(group_resources(g, "cpu") // cfg.cpus_per_worker) * g["maxReplicas"] for g in workers
            )
            assert slots >= cfg.num_workers, f"{verb}: {cfg.num_workers} workers, room for {slots}"
    ingest = rayjob(objects, "ingest")
    cfg = job_config(ingest)
    assert isinstance(cfg, IngestConfig)
    cpus = sum(group_resources(g, "cpu") * g["maxReplicas"] for g in ray_clusters(ingest)["workerGroupSpecs"])
    assert cpus >= cfg.embed_concurrency * cfg.embed_num_cpus + 0.25


@pytest.mark.parametrize("profile", ["gpu", "airgapped"])
def test_cluster_profiles_keep_job_outputs_in_shared_storage(profile: str) -> None:
    """Checkpoints, adapters, tables and results must be where every node and the engines reach them."""
    objects = rendered(profile, jobs=True)
    for verb in JOB_CONFIGS:
        for group in groups(rayjob(objects, verb)):
            env = container_env(group["template"]["spec"]["containers"][0])
            assert str(env["WELIP_STORAGE_URL"]).startswith("s3://"), verb
    assert AlignConfig.model_validate(job_config(rayjob(objects, "align")).model_dump()).rl_backend == "verl"


def test_gpu_profile_serves_the_model_the_align_job_trains() -> None:
    cfg = job_config(rayjob(rendered("gpu", jobs=True), "align"))
    assert isinstance(cfg, AlignConfig)
    served = {m["model_id"]: m for m in app_args(rendered("gpu"), "deployments.gateway:build_app")["models"]}
    assert served[cfg.base_model_id]["source"] == cfg.model


def test_evaluate_targets_this_releases_gateway_by_default() -> None:
    cfg = job_config(rayjob(rendered("gpu", jobs=True), "evaluate"))
    assert isinstance(cfg, SuiteConfig)
    assert cfg.target.base_url == f"http://welip-serve-svc.{NAMESPACE}.svc.cluster.local:8000/v1"
    assert cfg.target.model == "qwen2.5-7b-instruct" and cfg.target.api_key_env == "WELIP_API_KEY"


def test_entrypoint_values_are_quoted_for_the_shell() -> None:
    objects = render_chart(
        [],
        {
            "jobs": {
                "ingest": {
                    "enabled": True,
                    "runId": "q",
                    "overrides": {"table": "a b'c", "batch_size": 1000000},
                }
            }
        },
    )
    argv = shlex.split(entrypoint_of(objects, "ingest"))
    assert "table=a b'c" in argv and "batch_size=1000000" in argv


# -- the two-node overlay (tests/integration's Docker cluster) -------------------------------------


def test_two_node_overlay_runs_on_loopback_with_local_paths() -> None:
    objects = rendered("two-node")
    config = serve_config(objects)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 18000}
    assert config["proxy_location"] == "HeadOnly"
    serving = ServingConfig.model_validate(app_args(objects, "deployments.gateway:build_app"))
    (model,) = serving.models
    assert (model.model_id, model.kv_cache_space_gib, model.cpus_per_replica) == (
        "smollm2-135m-instruct",
        1,
        1,
    )
    assert [e.num_cpus for e in serving.embeddings] == [0.5] and serving.gateway.num_cpus == 0.1
    assert serving.gateway.auth.enabled and serving.gateway.auth.admin_key_env == "WELIP_ADMIN_KEY"
    assert serving.gateway.audit.enabled and serving.gateway.limits.default_rpm
    agents = AgentsAppConfig.model_validate(app_args(objects, "deployments.agents:build_app"))
    assert agents.num_cpus == 0.1 and agents.trust.auth.enabled
    ingest = job_config(rayjob(objects, "ingest"))
    assert isinstance(ingest, IngestConfig) and ingest.documents == "data/docs" and ingest.storage_url is None
    evaluate = job_config(rayjob(objects, "evaluate"))
    assert isinstance(evaluate, SuiteConfig)
    assert (
        evaluate.target.base_url == "http://127.0.0.1:18000/v1"
        and evaluate.target.api_key_env == "WELIP_API_KEY"
    )
    texts = [*strings(objects), *strings(config)]
    assert not [t for t in texts if "s3://" in t or t in ("WELIP_S3_ENDPOINT_URL", "WELIP_STORAGE_URL")]


# -- network policies -----------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "the chart selects by labels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def allowed_from(policies: list[dict[str, Any]], labels: dict[str, str], port: int) -> list[dict[str, Any]]:
    """The peers NetworkPolicies let reach a pod (``labels``, release namespace) on ``port``.

    A pod no policy selects is open to all (``[{"*": ...}]``); a rule without ``from`` allows
    every source, one without ``ports`` every port.
    """
    selecting = [
        p
        for p in policies
        if not p["metadata"].get("namespace") and _selects(p["spec"]["podSelector"], labels)
    ]
    if not selecting:
        return [{"*": "no policy selects the pod"}]
    peers: list[dict[str, Any]] = []
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            if "ports" not in rule or port in [p["port"] for p in rule["ports"]]:
                peers.extend(rule.get("from", [{"*": "a rule without from"}]))
    return peers


def _pod_labels(template: dict[str, Any], node_type: str) -> dict[str, str]:
    labels: dict[str, str] = template["metadata"]["labels"]
    return {**labels, "ray.io/is-ray-node": "yes", "ray.io/node-type": node_type}  # KubeRay adds these


@pytest.mark.parametrize("profile", ["default", "gpu", "airgapped"])
def test_network_policies_keep_ray_ports_inside_the_cluster(profile: str) -> None:
    objects = rendered(profile, jobs=True)
    policies = objects_of(objects, "NetworkPolicy")
    values = user_values(PROFILES[profile])
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["networkPolicy"]
    network = {**defaults, **values.get("networkPolicy", {})}
    operator, ingress_from, metrics = network["operatorFrom"], network["ingressFrom"], network["metricsFrom"]
    assert not [p for p in policies for s in strings(p) if s == "ipBlock"], "no address ranges"
    (service,) = objects_of(objects, "RayService")
    serving = service["spec"]["rayClusterConfig"]
    own = {"podSelector": {"matchLabels": {"welip.io/ray-cluster": "welip"}}}
    release_pods = {
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/name": "welip", "app.kubernetes.io/instance": "welip"}
        }
    }
    for group, node_type in [
        (serving["headGroupSpec"], "head"),
        *[(g, "worker") for g in serving["workerGroupSpecs"]],
    ]:
        labels = _pod_labels(group["template"], node_type)
        for port in RAY_PORTS.values():
            peers = allowed_from(policies, labels, port)
            assert own in peers, f"{node_type}:{port}: the cluster's own pods are cut off"
            outside = [p for p in peers if p != own]
            expected = operator if port != RAY_PORTS["client"] else []
            assert outside == expected, f"{node_type}:{port} open to {outside}"
        serve_peers = allowed_from(policies, labels, 8000)
        assert [p for p in serve_peers if p != own] == [*ingress_from, release_pods]
        assert [p for p in allowed_from(policies, labels, 8080) if p != own] == (
            metrics if values.get("observability", {}).get("podMonitor", {}).get("enabled") else []
        )
    # A namespace selector reaches the dashboard (8265) only for the operator.
    (head_labels,) = [_pod_labels(serving["headGroupSpec"]["template"], "head")]
    assert [p for p in allowed_from(policies, head_labels, 8265) if "namespaceSelector" in p] == [
        p for p in operator if "namespaceSelector" in p
    ]
    # Job clusters: Ray's ports from the release's job pods and the operator only.
    job = rayjob(objects, "ingest")
    job_peer = {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "welip",
                "app.kubernetes.io/instance": "welip",
                "welip.io/workload": "job",
            }
        }
    }
    for template in [g["template"] for g in groups(job)] + [job["spec"]["submitterPodTemplate"]]:
        labels = _pod_labels(template, "head")
        for port in RAY_PORTS.values():
            outside = [p for p in allowed_from(policies, labels, port) if p != job_peer]
            assert outside == (operator if port != RAY_PORTS["client"] else []), port
        assert allowed_from(policies, labels, 8000) == [job_peer]
    # Anything else of the release: denied by default.
    assert (
        allowed_from(
            policies, {"app.kubernetes.io/name": "welip", "app.kubernetes.io/instance": "welip"}, 8265
        )
        == []
    )


def test_network_policy_checker_sees_an_open_port() -> None:
    """The checker above fails when a policy opens the dashboard to another namespace."""
    objects = render_chart([], {"networkPolicy": {"ingressFrom": [{"namespaceSelector": {}}]}})
    (service,) = objects_of(objects, "RayService")
    labels = _pod_labels(service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"], "head")
    assert {"namespaceSelector": {}} in allowed_from(objects_of(objects, "NetworkPolicy"), labels, 8000)
    assert {"namespaceSelector": {}} not in allowed_from(objects_of(objects, "NetworkPolicy"), labels, 8265)
    assert allowed_from([], labels, 8265) == [{"*": "no policy selects the pod"}]


def test_data_stores_only_from_ray_pods_peers_and_operators() -> None:
    objects = rendered("gpu")
    stores = {
        p["metadata"]["name"]: p
        for p in objects_of(objects, "NetworkPolicy")
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "data"
    }
    assert set(stores) == {"welip-postgres", "welip-redis", "welip-minio"}
    ray_pods = {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "welip",
                "app.kubernetes.io/instance": "welip",
                "ray.io/is-ray-node": "yes",
            }
        }
    }
    for name, policy in stores.items():
        spec = policy["spec"]
        client, peers, *operators = spec["ingress"]
        assert client["from"] == [ray_pods] and client["ports"], name
        assert peers == {"from": [{"podSelector": spec["podSelector"]}]}, name
        for rule in operators:
            assert "ports" not in rule and all("ipBlock" not in p for p in rule["from"])
    # A store in another namespace: the policy goes there, the Ray pods come from the release's.
    (policy,) = [
        p
        for p in render_chart(
            [],
            {
                "networkPolicy": {
                    "dataStores": [
                        {
                            "name": "pg",
                            "namespace": "data",
                            "podSelector": {"matchLabels": {"app": "pg"}},
                            "ports": [5432],
                        }
                    ]
                }
            },
        )
        if p["metadata"]["name"] == "welip-pg"
    ]
    assert policy["metadata"]["namespace"] == "data"
    assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}
    }


# -- entry points ------------------------------------------------------------------------------


def test_ingress_serves_the_gateway_over_tls() -> None:
    objects = rendered("gpu")
    (ingress,) = objects_of(objects, "Ingress")
    (certificate,) = objects_of(objects, "Certificate")
    (tls,) = ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    assert tls["hosts"] == [rule["host"]] == certificate["spec"]["dnsNames"]
    assert tls["secretName"] == certificate["spec"]["secretName"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "welip-serve-svc", "port": {"number": 8000}}  # KubeRay's Serve Service
    (route,) = objects_of(rendered("airgapped"), "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "welip-serve-svc", "port": 8000}]
    assert route["spec"]["parentRefs"][0]["sectionName"] == "https"
    with pytest.raises(helm.HelmRenderError, match="choose one"):
        render_chart(
            [], {"ingress": {"enabled": True}, "httpRoute": {"enabled": True, "parentRefs": [{"name": "g"}]}}
        )


_URL = re.compile(r"https?://([^/:\s\"']+)")


def test_airgapped_profile_names_no_host_outside_the_cluster() -> None:
    objects = rendered("airgapped", jobs=True)
    texts = [*strings(objects), *strings(serve_config(objects))]
    hosts = {host for text in texts for host in _URL.findall(text)}
    assert hosts, "the profile names in-cluster endpoints"
    outside = {
        h
        for h in hosts
        if not (h.endswith((".svc", ".svc.cluster.local")) or h in ("127.0.0.1", "localhost"))
    }
    assert outside == set()
    images = {c["image"] for _, t in pod_templates(objects) for c in t["spec"]["containers"]}
    assert all(image.split("/")[0].endswith(".svc.cluster.local:5000") for image in images), images
    for _, template in pod_templates(objects):
        if template["spec"]["containers"][0]["name"] in ("ray-head", "ray-worker"):
            assert container_env(template["spec"]["containers"][0])["HF_HUB_OFFLINE"] == "1"
    # The check finds an outside host where there is one.
    assert _URL.findall("jwks_url: https://keycloak.example.com/x") == ["keycloak.example.com"]


# -- observability -------------------------------------------------------------------------------


def test_monitoring_carries_the_dashboards_and_the_alert_rules() -> None:
    """The ConfigMap holds exactly configs/grafana/dashboards/*.json, the PrometheusRule exactly
    configs/prometheus/welip-alerts.yaml's groups (the chart's files/ link to them)."""
    objects = rendered("gpu")
    (dashboards,) = [
        o for o in objects_of(objects, "ConfigMap") if o["metadata"]["name"].endswith("dashboards")
    ]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {k: json.loads(v) for k, v in dashboards["data"].items()} == {
        p.name: json.loads(p.read_text()) for p in DASHBOARD_FILES
    }
    (rule,) = objects_of(objects, "PrometheusRule")
    rules_file = yaml.safe_load((REPO_ROOT / "configs" / "prometheus" / "welip-alerts.yaml").read_text())
    assert rule["spec"]["groups"] == rules_file["groups"]
    assert rule["metadata"]["labels"]["release"] == "prometheus"


def test_promtool_checks_the_rendered_rule_groups(tmp_path: Path) -> None:
    (rule,) = objects_of(rendered("gpu"), "PrometheusRule")
    path = tmp_path / "groups.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_podmonitor_scrapes_every_ray_pod_on_kuberays_metrics_port() -> None:
    """KubeRay labels every Ray pod ``ray.io/is-ray-node: "yes"`` and gives its Ray container a
    port named ``metrics`` (8080), unless the template already names one."""
    objects = rendered("gpu", jobs=True)
    (monitor,) = objects_of(objects, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector["ray.io/is-ray-node"] == "yes"
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    for where, template in pod_templates(objects):
        if where.endswith("/submitter"):
            continue
        assert _selects({"matchLabels": selector}, _pod_labels(template, "head")), where
        ports = {
            p.get("name"): p["containerPort"] for p in template["spec"]["containers"][0].get("ports", [])
        }
        assert ports.get("metrics", 8080) == 8080 and 8080 not in {
            v for k, v in ports.items() if k != "metrics"
        }


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_ray_container_takes_the_tracing_configmap(profile: str) -> None:
    objects = rendered(profile, jobs=True)
    (otel,) = [o for o in objects_of(objects, "ConfigMap") if o["metadata"]["name"].endswith("-otel")]
    assert otel["data"] and all(key.startswith("OTEL_") for key in otel["data"])
    for where, template in pod_templates(objects):
        if where.endswith("/submitter"):  # runs `ray job submit` only
            continue
        container = template["spec"]["containers"][0]
        if container["name"].startswith("ray-") and not where.endswith("/submitter"):
            refs = [e["configMapRef"] for e in container["envFrom"] if "configMapRef" in e]
            assert refs == [{"name": otel["metadata"]["name"], "optional": True}], where


# -- GitOps and CI -----------------------------------------------------------------------------


ARGOCD_APPS = sorted(ARGOCD_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", ARGOCD_APPS, ids=[p.name for p in ARGOCD_APPS])
def test_argocd_application_validates_and_points_at_the_chart(path: Path) -> None:
    (app,) = load_documents(path)
    assert check_resource(app) == []
    source = app["spec"]["source"]
    assert source["path"] == CHART_DIR.relative_to(REPO_ROOT).as_posix()
    assert all((CHART_DIR / f).is_file() for f in source["helm"]["valueFiles"])
    assert app["spec"]["revisionHistoryLimit"] >= 5, "rollback needs history"


def test_dev_syncs_itself_and_prod_waits_for_a_person() -> None:
    apps = {
        a["metadata"]["labels"]["welip.io/environment"]: a for p in ARGOCD_APPS for a in load_documents(p)
    }
    assert set(apps) == {"dev", "prod"}
    assert apps["dev"]["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "automated" not in apps["prod"]["spec"]["syncPolicy"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", apps["prod"]["spec"]["source"]["targetRevision"])


def test_ci_pipeline_tests_scans_and_ships_image_and_chart() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    assert set(jobs) == {"test", "scan", "chart", "image"}

    def commands(job: str) -> str:
        return "\n".join(step.get("run", "") for step in jobs[job]["steps"])

    assert "make lint" in commands("test") and "make test" in commands("test")
    assert "bandit -q -c pyproject.toml -r welip deployments jobs" in commands("scan")
    assert "hadolint Dockerfile" in commands("scan")
    assert "helm lint" in commands("chart") and "helm package" in commands("chart")
    assert "make image" in commands("image") and "docker push" in commands("image")
    assert "${VERSION}" in commands("image") and "pyproject.toml" in commands("image")
    assert set(jobs["image"]["needs"]) == {"test", "scan", "chart"}
    # Secrets reach commands through the environment, never spliced into the script.
    assert "secrets." not in commands("image")


# -- the chart's own HA stores -------------------------------------------------------------------


def test_gpu_profile_runs_ha_stores_and_points_welip_at_them() -> None:
    """PostgreSQL 3 instances with nightly backups to the object store, Redis with 3 sentinels,
    MinIO on 4 nodes; every Ray container's environment names them, and their CAs are mounted."""
    objects = rendered("gpu", jobs=True)
    (cluster,) = objects_of(objects, "Cluster")
    assert cluster["spec"]["instances"] == 3
    assert cluster["spec"]["postgresql"]["parameters"]["ssl_min_protocol_version"] == "TLSv1.3"
    store = cluster["spec"]["backup"]["barmanObjectStore"]
    assert store["destinationPath"].startswith("s3://")
    assert store["endpointURL"] == "http://welip-minio.welip.svc.cluster.local:9000"
    assert store["s3Credentials"]["secretAccessKey"]["name"] == "welip-backup-s3"
    (scheduled,) = objects_of(objects, "ScheduledBackup")
    assert scheduled["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    assert len(scheduled["spec"]["schedule"].split()) == 6  # CloudNativePG's cron has seconds
    sets = {s["metadata"]["name"]: s for s in objects_of(objects, "StatefulSet")}
    assert (sets["welip-redis"]["spec"]["replicas"], sets["welip-minio"]["spec"]["replicas"]) == (3, 4)
    redis_containers = {c["name"] for c in sets["welip-redis"]["spec"]["template"]["spec"]["containers"]}
    assert redis_containers == {"redis", "sentinel"}
    minio_args = sets["welip-minio"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "http://welip-minio-{0...3}.welip-minio-headless.welip.svc.cluster.local/data" in minio_args
    sentinels = ",".join(
        f"welip-redis-{i}.welip-redis-headless.welip.svc.cluster.local:26379" for i in range(3)
    )
    ray_pods = [(w, t) for w, t in pod_templates(objects) if not w.endswith("/submitter")]
    assert len(ray_pods) > 2
    for where, template in ray_pods:
        env = container_env(template["spec"]["containers"][0])
        assert env["WELIP_DATABASE_URL"] == {"secretKeyRef": {"name": "welip-postgres-app", "key": "uri"}}, (
            where
        )
        assert env["WELIP_REDIS_URL"] == f"redis+sentinel://:$(WELIP_REDIS_PASSWORD)@{sentinels}/welip", where
        assert env["WELIP_S3_ENDPOINT_URL"] == "http://welip-minio.welip.svc.cluster.local:9000", where
        ca_file = env["WELIP_DATABASE_CA_FILE"]
        mounts = {m["mountPath"]: m["name"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes[mounts[str(Path(ca_file).parent)]]["secret"]["secretName"] == "welip-postgres-ca"
        names = [e["name"] for e in template["spec"]["containers"][0]["env"]]
        assert len(names) == len(set(names)), f"{where}: an env variable twice"


def test_stores_are_off_by_default_and_their_knobs_are_validated() -> None:
    assert not {"Cluster", "ScheduledBackup", "StatefulSet"} & {o["kind"] for o in rendered("default")}
    with pytest.raises(helm.HelmValuesError):
        render_chart([], {"stores": {"postgres": {"backup": {"encryption": "rot13"}}}})
    with pytest.raises(helm.HelmValuesError):
        render_chart([], {"stores": {"redis": {"replicas": 5}}})
    # The chart sets the URL of a store it runs: the same variable in `env` would be ambiguous.
    with pytest.raises(helm.HelmRenderError, match="WELIP_S3_ENDPOINT_URL"):
        render_chart(
            [], {"stores": {"minio": {"enabled": True}}, "env": {"WELIP_S3_ENDPOINT_URL": "http://x:9000"}}
        )


def test_tls_cas_and_encryption_keys_reach_every_ray_pod() -> None:
    values = {
        "tls": {
            "caSecret": "welip-cas",
            "databaseCAKey": "pg.crt",
            "redisCAKey": "redis.crt",
            "s3CAKey": "s3.crt",
        },
        "encryption": {"existingSecret": "welip-encryption"},
        "stores": {"minio": {"enabled": True, "tls": {"existingSecret": "welip-minio-tls"}}},
    }
    objects = render_chart([], values)
    problems = {f"{o['kind']}/{o['metadata']['name']}": check_resource(o) for o in objects}
    assert {name: found for name, found in problems.items() if found} == {}
    for where, template in pod_templates(objects):
        if where.endswith("/submitter"):  # runs `ray job submit` only
            continue
        container = template["spec"]["containers"][0]
        env = container_env(container)
        assert env["WELIP_DATABASE_CA_FILE"] == "/etc/welip/tls/pg.crt", where
        assert env["WELIP_REDIS_CA_FILE"] == "/etc/welip/tls/redis.crt", where
        assert env["WELIP_S3_CA_BUNDLE"] == "/etc/welip/tls/s3.crt", where
        assert env["WELIP_S3_ENDPOINT_URL"].startswith("https://"), where
        assert env["WELIP_ENCRYPTION_KEYS"] == {"secretKeyRef": {"name": "welip-encryption", "key": "keys"}}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/welip/tls"]
        (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "welip-cas" and mount["readOnly"]
    (minio,) = [s for s in objects_of(objects, "StatefulSet") if s["metadata"]["name"] == "welip-minio"]
    pod = minio["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][1].startswith("https://")
    (certs,) = [v for v in pod["volumes"] if v["name"] == "certs"]
    assert {i["path"] for i in certs["secret"]["items"]} == {"public.crt", "private.key"}


def test_store_policies_admit_welip_and_the_backups() -> None:
    """Redis's sentinel port is open to WeLIP's pods; MinIO takes PostgreSQL's backups."""
    stores = {
        p["metadata"]["name"]: p["spec"]
        for p in objects_of(rendered("gpu"), "NetworkPolicy")
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "data"
    }
    assert {p["port"] for p in stores["welip-redis"]["ingress"][0]["ports"]} == {6379, 26379}
    minio_from = [peer for rule in stores["welip-minio"]["ingress"] for peer in rule["from"]]
    assert {"podSelector": {"matchLabels": {"cnpg.io/cluster": "welip-postgres"}}} in minio_from
    # The store pods are not the release's own (its default-deny does not shut them).
    for name, spec in stores.items():
        assert spec["podSelector"]["matchLabels"].get("app.kubernetes.io/name") != "welip", name
