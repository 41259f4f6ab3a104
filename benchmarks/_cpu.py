"""CPU seconds per process role during a benchmark run, read from ``/proc`` (Linux).

:func:`snapshot` before and after a run; :func:`cpu_by_role` is the difference, summed by
what each process is to the stack (engine core, engine worker, a Serve replica, HAProxy,
GCS, raylet, the dashboard, the load generator...). A process that starts during the run
counts from zero; one that ends during it is lost (its time goes to its parent only when
reaped), except the load generator, which the benchmark reaps itself
(:func:`children_cpu_s`). "other (not the stack)" is every other process of the box:
a quiet box keeps it near zero.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

__all__ = ["LOAD_GENERATOR", "children_cpu_s", "cpu_by_role", "role_of", "snapshot"]

LOAD_GENERATOR = "load generator (vllm bench)"

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

# (role, test on the command line), first match wins; the command line of a Ray worker is
# its process title (ray::<Actor>...).
_ROLES: tuple[tuple[str, str], ...] = (
    ("engine core", "VLLM::EngineCore"),
    ("engine worker", "VLLM::Worker"),
    (LOAD_GENERATOR, "_vllm_cli.py bench"),
    ("bare vLLM API server", "_vllm_cli.py serve"),
    ("serve controller", "ray::ServeController"),
    ("HAProxy manager actor", "ray::HAProxyManager"),
    ("Serve proxy actor", "ray::ProxyActor"),
    ("HAProxy", "haproxy"),
    ("GCS", "gcs_server"),
    ("raylet", "raylet"),
    ("dashboard", "dashboard/dashboard.py"),
    ("dashboard agent", "ray::DashboardAgent"),
    ("dashboard agent", "dashboard/agent.py"),
    ("runtime env agent", "runtime_env/agent"),
    ("metrics (telemetry) agent", "ray::TelemetryAgent"),
    ("log monitor", "log_monitor.py"),
    ("dashboard subprocess modules", "multiprocessing.forkserver"),
    ("dashboard subprocess modules", "ray.dashboard"),
    ("serve run (CLI)", "serve run"),
    ("idle Ray workers", "ray::IDLE"),
    ("Redis", "redis-server"),
    ("PostgreSQL", "postgres"),
    ("Phoenix", "phoenix"),
)


def role_of(cmdline: str) -> str:
    """What a process is to the stack, by its command line (``other`` when nothing matches)."""
    if cmdline.startswith("ray::ServeReplica:"):
        # ray::ServeReplica:<app>:<deployment>[:...]: one role per deployment
        parts = cmdline.removeprefix("ray::ServeReplica:").split()[0].split(":")
        return f"replica {parts[1]}" if len(parts) > 1 else "replica"
    for role, needle in _ROLES:
        if needle in cmdline:
            return role
    return "other Ray workers" if cmdline.startswith("ray::") else "other (not the stack)"


def children_cpu_s() -> float:
    """CPU seconds of this process's ended and reaped children (a load generator run to its end)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def snapshot() -> dict[int, tuple[str, float]]:
    """Every process's role and CPU seconds (user + system) so far, by pid."""
    processes: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended meanwhile
            continue
        if not cmdline:  # a kernel thread
            continue
        # Fields after the command name in parentheses (which may hold spaces): utime is the 14th field.
        fields = stat.rpartition(")")[2].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
        processes[int(entry.name)] = (role_of(cmdline), cpu_s)
    return processes


def cpu_by_role(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by role, largest first."""
    spent: dict[str, float] = {}
    for pid, (role, cpu_s) in after.items():
        previous = before.get(pid)
        used = cpu_s - previous[1] if previous is not None and previous[0] == role else cpu_s
        if used > 0:
            spent[role] = spent.get(role, 0.0) + used
    return dict(sorted(spent.items(), key=lambda item: -item[1]))
