"""PostgreSQL failover and TLS on real servers this module starts (tests/pg_servers.py).

A primary and a synchronous streaming hot standby on loopback; WeLIP is given both in one
multi-host URL, the standby first, with ``target_session_attrs=read-write``. The primary is
stopped (``pg_ctl stop -m fast``) and the standby promoted while the gateway serves a
steady load and while an agent run is in flight. Only the gateway test needs the session's
Ray cluster and engines; the others start no Ray.

The measured window goes to ``build/failover-postgres.json``.
"""

from __future__ import annotations

import asyncio
import json
import operator
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from ray import serve
from typer.testing import CliRunner

from tests.integration.conftest import (
    APP_NAME,
    ENGINE_DEPLOYMENT,
    MODEL,
    SHORT_CONTEXT,
    SHORT_MODEL,
    _on_handle_loop,
)
from tests.pg_servers import PgServer, make_certificates, primary_and_standby, tls_server
from welip.store import Database, KeyStore

pytestmark = pytest.mark.integration

REPORT = Path("build/failover-postgres.json")
LOAD_BEFORE_S = 3.0
NO_PRIMARY_S = 1.0  # the primary is gone and the standby not yet promoted
LOAD_AFTER_S = 5.0
WORKERS = 4


def failover_url(primary: PgServer, standby: PgServer) -> str:
    # The standby first: only target_session_attrs keeps WeLIP off it before the failover.
    return (
        f"postgresql://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/postgres"
        "?target_session_attrs=read-write"
    )


@pytest.fixture
def pair() -> Iterator[tuple[PgServer, PgServer]]:
    with primary_and_standby(synchronous=True) as servers:
        yield servers


def _record(results: dict[str, Any]) -> None:
    REPORT.parent.mkdir(exist_ok=True)
    found = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    found.update(results)
    REPORT.write_text(json.dumps(found, indent=2) + "\n")


def _fail_over(primary: PgServer, standby: PgServer) -> dict[str, float]:
    started = time.monotonic()
    primary.stop("fast")
    stopped = time.monotonic()
    time.sleep(NO_PRIMARY_S)
    standby.promote()
    return {"stop_s": stopped - started, "no_primary_s": time.monotonic() - stopped}


def test_welip_keys_create_takes_a_multi_host_url_and_writes_to_the_primary(
    pair: tuple[PgServer, PgServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from welip.cli import app

    primary, standby = pair
    monkeypatch.setenv("WELIP_DATABASE_URL", failover_url(primary, standby))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    created = runner.invoke(app, ["keys", "create", "--name", "ha", "--role", "user"])
    assert created.exit_code == 0, created.output
    with psycopg.connect(primary.url()) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM api_keys")]
    assert names == ["ha"]
    # The same in libpq's key-value form.
    monkeypatch.setenv(
        "WELIP_DATABASE_URL",
        f"host=127.0.0.1,127.0.0.1 port={standby.port},{primary.port} dbname=postgres user=postgres "
        "target_session_attrs=read-write",
    )
    assert runner.invoke(app, ["keys", "create", "--name", "ha-2", "--role", "user"]).exit_code == 0
    listed = runner.invoke(app, ["keys", "list"])
    assert sorted(json.loads(line)["name"] for line in listed.stdout.splitlines()) == ["ha", "ha-2"]


class _Steps(TypedDict):
    steps: Annotated[list[str], operator.add]


def _graph(checkpointer: Any, pause_s: float) -> Any:
    from langgraph.graph import END, START, StateGraph

    async def first(state: _Steps) -> dict[str, list[str]]:
        return {"steps": [f"first-{len(state['steps'])}"]}

    async def second(state: _Steps) -> dict[str, list[str]]:
        await asyncio.sleep(pause_s)  # the failover happens here, between two checkpoints
        return {"steps": [f"second-{len(state['steps'])}"]}

    graph = StateGraph(_Steps)
    graph.add_node("first", first)
    graph.add_node("second", second)
    graph.add_edge(START, "first")
    graph.add_edge("first", "second")
    graph.add_edge("second", END)
    return graph.compile(checkpointer=checkpointer)


def test_an_agent_thread_continues_across_a_failover_and_no_run_hangs(
    pair: tuple[PgServer, PgServer],
) -> None:
    from welip.agents import open_checkpointer

    primary, standby = pair
    config = {"configurable": {"thread_id": "thread-" + uuid.uuid4().hex[:8]}}

    async def scenario() -> dict[str, Any]:
        async with open_checkpointer(failover_url(primary, standby)) as saver:
            graph = _graph(saver, pause_s=2.0)
            before = await graph.ainvoke({"steps": ["hello"]}, config)
            assert before["steps"] == ["hello", "first-1", "second-2"]
            in_flight = asyncio.create_task(graph.ainvoke({"steps": ["during"]}, config))
            await asyncio.sleep(0.5)  # the run is in its second node
            timings = await asyncio.to_thread(_fail_over, primary, standby)
            outcome: str
            try:
                await asyncio.wait_for(in_flight, timeout=60)
                outcome = "completed"
            except TimeoutError:
                outcome = "hung"
            except psycopg.OperationalError as exc:
                outcome = f"failed: {exc}"
            started = time.monotonic()
            after = await asyncio.wait_for(graph.ainvoke({"steps": ["after"]}, config), timeout=60)
            return {
                "outcome": outcome,
                "after": after["steps"],
                "continue_s": time.monotonic() - started,
                **timings,
            }

    result = asyncio.run(scenario())
    assert result["outcome"] != "hung"
    # The checkpoint written before the failover is on the promoted standby; the thread goes on.
    steps = result["after"]
    assert steps[:4] == ["hello", "first-1", "second-2", "during"]
    assert steps[-3:] == ["after", f"first-{len(steps) - 2}", f"second-{len(steps) - 1}"]
    if result["outcome"] == "completed":
        assert len(steps) == 9  # the run in flight's own first and second steps are there too
    with psycopg.connect(standby.url()) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    _record({"agent_thread": {k: v for k, v in result.items() if k != "after"}})


def test_tls_verify_full_connects_with_the_ca_and_refuses_a_certificate_that_does_not_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = make_certificates(
        tmp_path / "ours",
        "welip-test-ca",
        {"db": "IP:127.0.0.1,DNS:localhost", "elsewhere": "DNS:db.elsewhere.test"},
    )
    rogue = make_certificates(tmp_path / "rogue", "rogue-ca", {"db": "IP:127.0.0.1,DNS:localhost"})

    def connect(url: str) -> tuple[Any, ...]:
        db = Database(url, connect_timeout_s=5)
        try:
            with db.engine.connect() as conn:
                row = conn.exec_driver_sql(
                    "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                )
                return tuple(row.one())
        finally:
            db.dispose()

    with tls_server(ours.cert("db"), ours.key("db")) as server:
        base = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        assert connect(f"{base}?sslmode=verify-full&sslrootcert={ours.ca}") == (True, "TLSv1.3")
        # The CA from a mounted Secret, named by the environment: verify-full without URL options.
        monkeypatch.setenv("WELIP_DATABASE_CA_FILE", str(ours.ca))
        assert connect(base) == (True, "TLSv1.3")
        # Trusting another CA: refused.
        monkeypatch.setenv("WELIP_DATABASE_CA_FILE", str(rogue.ca))
        with pytest.raises(sa.exc.OperationalError, match="certificate verify failed"):
            connect(base)
        monkeypatch.delenv("WELIP_DATABASE_CA_FILE")
    with tls_server(ours.cert("elsewhere"), ours.key("elsewhere")) as server:
        # Signed by our CA, for another name: refused.
        url = f"postgresql://postgres@127.0.0.1:{server.port}/postgres?sslmode=verify-full&sslrootcert={ours.ca}"
        with pytest.raises(
            sa.exc.OperationalError,
            match=r'certificate for "db\.elsewhere\.test".* does not match host name "127\.0\.0\.1"',
        ):
            connect(url)
    with tls_server(ours.cert("db"), ours.key("db"), tls_version="TLSv1.2") as server:
        # Our CA and name, but no TLS 1.3: where WeLIP verifies, it also asks for 1.3.
        url = f"postgresql://postgres@127.0.0.1:{server.port}/postgres?sslmode=verify-full&sslrootcert={ours.ca}"
        with pytest.raises(sa.exc.OperationalError, match=r"(?i)protocol version|tlsv1 alert"):
            connect(url)
        assert connect(url + "&ssl_min_protocol_version=TLSv1.2") == (True, "TLSv1.2")  # the URL's own choice


def test_the_gateway_rides_out_a_postgres_failover_with_one_audit_row_per_request(
    base_url: str, pair: tuple[PgServer, PgServer], tmp_path: Path
) -> None:
    from welip.gateway import GatewayConfig, GatewayCore, HandleEngine, ModelCard, build_gateway_app
    from welip.models import resolve_model_path
    from welip.trust import TokenCounter, Trust

    primary, standby = pair
    database = Database(failover_url(primary, standby), connect_timeout_s=2)
    database.upgrade()
    keys = KeyStore(database)
    _, steady_key = keys.create_key(name="steady", role="user")
    # Keys no replica has seen: their look-ups must reach the database, whatever its state.
    fresh = [keys.create_key(name=f"fresh-{i}", role="user")[1] for i in range(400)]
    config = GatewayConfig.model_validate(
        {
            "auth": {"enabled": True, "key_cache_s": 1},
            "audit": {
                "enabled": True,
                "flush_interval_s": 0.2,
                "spool_dir": str(tmp_path / "spool"),
                "max_unauthenticated_records_per_minute": None,
            },
        }
    )
    trust = Trust(config, database=database, redis=None)
    trust.token_counters[SHORT_MODEL] = TokenCounter.load(resolve_model_path(MODEL))
    card = ModelCard(id=SHORT_MODEL, created=0, root=MODEL, source=MODEL, max_model_len=SHORT_CONTEXT)

    async def loop_of_handles() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    loop = _on_handle_loop(loop_of_handles())
    sent: list[dict[str, Any]] = []
    marker = secrets.token_hex(4)
    failover: dict[str, float] = {}

    async def load() -> None:
        # Handles route on the loop they are made on (throughput mode): made here, on it.
        handle = serve.get_deployment_handle(
            f"{ENGINE_DEPLOYMENT[SHORT_MODEL]}:{SHORT_MODEL}", app_name=APP_NAME
        )
        app = build_gateway_app(GatewayCore({SHORT_MODEL: HandleEngine(handle)}, [card], config, trust))
        fresh_keys = iter(fresh)
        stop_at: list[float] = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as client:

            async def worker(n: int) -> None:
                i = 0
                while not stop_at or time.monotonic() < stop_at[0]:
                    i += 1
                    key = steady_key if i % 2 else next(fresh_keys, steady_key)
                    kind = "steady" if key == steady_key else "fresh"
                    request_id = f"{marker}-{n}-{i}"
                    body = {
                        "model": SHORT_MODEL,
                        "messages": [{"role": "user", "content": "Hi"}],
                        "max_tokens": 2,
                    }
                    started = time.monotonic()
                    response = await client.post(
                        "/v1/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {key}", "X-Request-Id": request_id},
                    )
                    sent.append(
                        {
                            "request_id": request_id,
                            "kind": kind,
                            "status": response.status_code,
                            "retry_after": response.headers.get("retry-after"),
                            "sent": started,
                            "answered": time.monotonic(),
                            "body": response.text[:300],
                        }
                    )

            workers = [asyncio.create_task(worker(n)) for n in range(WORKERS)]
            await asyncio.sleep(LOAD_BEFORE_S)
            failover["at"] = time.monotonic()
            failover.update(await asyncio.to_thread(_fail_over, primary, standby))
            stop_at.append(time.monotonic() + LOAD_AFTER_S)
            await asyncio.gather(*workers)

    asyncio.run_coroutine_threadsafe(load(), loop).result(timeout=120)
    writer = trust.audit
    assert writer is not None
    deadline = time.monotonic() + 30
    while (writer.spooled() or writer.pending()) and time.monotonic() < deadline:
        time.sleep(0.2)  # the writer replays its spool once a write succeeds again
    spooled_left = writer.spooled()
    trust.close()
    database.dispose()

    statuses = {r["request_id"]: r["status"] for r in sent}
    unexpected = [
        r for r in sent if r["status"] not in (200, 503) or (r["status"] == 503 and not r["retry_after"])
    ]
    assert unexpected == []  # never a 500, every refusal says when to retry
    # The key the gateway had seen works throughout (it is cached; the audit spools).
    assert {r["status"] for r in sent if r["kind"] == "steady"} == {200}
    with psycopg.connect(standby.url()) as conn:
        rows = conn.execute(
            "SELECT request_id, status FROM audit_log WHERE request_id LIKE %s", (f"{marker}-%",)
        ).fetchall()
    assert spooled_left == 0
    assert len(rows) == len(sent)  # exactly one row per request sent...
    assert dict(rows) == statuses  # ...with the status its caller saw

    by_time = sorted(sent, key=lambda r: r["sent"])
    refused = [r for r in by_time if r["status"] != 200]
    window_s = 0.0
    if refused:
        first_refused = refused[0]["sent"]
        back = [r["sent"] for r in by_time if r["status"] == 200 and r["sent"] > refused[-1]["sent"]]
        window_s = (back[0] if back else by_time[-1]["answered"]) - first_refused
    _record(
        {
            "gateway": {
                "requests": len(sent),
                "answered_200": sum(r["status"] == 200 for r in sent),
                "refused_503": len(refused),
                "refused_503_by_kind": {k: sum(r["kind"] == k for r in refused) for k in ("steady", "fresh")},
                "audit_rows": len(rows),
                "window_s": round(window_s, 3),
                "primary_stop_s": round(failover["stop_s"], 3),
                "no_primary_s": round(failover["no_primary_s"], 3),
                "workers": WORKERS,
            }
        }
    )
    print(json.dumps(json.loads(REPORT.read_text()), indent=2))
    # The window is the failover itself plus a connect timeout or two, not minutes.
    assert window_s < 15
