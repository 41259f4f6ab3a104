"""Render the Helm chart (``kuberay/charts/welip``) offline, with Helm itself as a library.

``helm-python-sdk`` binds Helm v4's Go SDK (no ``helm`` binary, no cluster). :func:`render_chart`
is what ``helm template <release> kuberay/charts/welip -n <namespace> -f a.yaml -f b.yaml --set ...``
prints, parsed::

    from tests.chart import CHART_DIR, render_chart, serve_config_of, entrypoint_of

    objects = render_chart([CHART_DIR / "values-cpu-demo.yaml", CHART_DIR / "ci" / "two-node-values.yaml"])
    serve_config_v2 = serve_config_of(objects)          # the RayService's serveConfigV2 (a YAML string)
    ingest = entrypoint_of(objects, "ingest")           # "python jobs/ingest.py --config ... key=value ..."
    evaluate = entrypoint_of(objects, "evaluate")
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = REPO_ROOT / "kuberay" / "charts" / "welip"
# The profiles a user installs with, by name; the defaults (values.yaml) are the "default" profile.
PROFILES: dict[str, list[Path]] = {
    "default": [],
    "cpu-demo": [CHART_DIR / "values-cpu-demo.yaml"],
    "gpu": [CHART_DIR / "values-gpu.yaml"],
    "airgapped": [CHART_DIR / "values-airgapped.yaml"],
    "two-node": [CHART_DIR / "values-cpu-demo.yaml", CHART_DIR / "ci" / "two-node-values.yaml"],
}
RELEASE = "welip"
NAMESPACE = "welip"


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base`` as Helm merges ``-f`` files: maps merge key by key, anything
    else (lists included) is replaced; a null stays, and removes the chart's default when rendered."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def user_values(values_files: list[Path], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values a user passes: the files in order, then ``values`` (as ``--set`` would)."""
    merged: dict[str, Any] = {}
    for path in values_files:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        merged = merge_values(merged, loaded)
    return merge_values(merged, values or {})


def render_templates(
    values_files: list[Path],
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Each template's rendered text by its path (``welip/templates/x.yaml``), as Helm renders it.

    Raises:
        helm_python.HelmValuesError: the values break values.schema.json.
        helm_python.HelmRenderError: a template fails (e.g. a ``fail`` on inconsistent values).
    """
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(
            user_values(values_files, values), name=release, namespace=namespace, is_install=True
        )


def render_chart(
    values_files: list[Path],
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """Every object the chart renders with these values files (in order) and ``values`` on top.

    Args:
        values_files: values files, as ``helm template -f`` takes them (e.g. a profile, then an overlay).
        values: more values on top, as nested dicts (``{"jobs": {"ingest": {"runId": "x"}}}``).
        release: the release name (``helm template <release>``); resource names start with it.
        namespace: the release namespace (``-n``).

    Returns:
        The parsed objects (dicts), template by template in path order; NOTES.txt left out.
    """
    rendered = render_templates(values_files, values, release=release, namespace=namespace)
    objects: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if not path.endswith((".yaml", ".yml")):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(rendered[path]) if doc)
    return objects


def objects_of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [obj for obj in objects if obj.get("kind") == kind]


def serve_config_of(objects: list[dict[str, Any]]) -> str:
    """The RayService's ``spec.serveConfigV2``: a Serve config file, as ``serve deploy`` takes it."""
    (service,) = objects_of(objects, "RayService")
    text: str = service["spec"]["serveConfigV2"]
    return text


def entrypoint_of(objects: list[dict[str, Any]], verb: str) -> str:
    """The ``spec.entrypoint`` of the RayJob running ``jobs/<verb>.py`` (rendered when enabled)."""
    (job,) = [
        obj
        for obj in objects_of(objects, "RayJob")
        if obj["metadata"]["labels"]["app.kubernetes.io/component"] == verb
    ]
    text: str = job["spec"]["entrypoint"]
    return text
