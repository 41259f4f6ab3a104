"""Real Redis servers for the failover and TLS tests: a master, a replica, three sentinels, TLS.

Debian's `redis-server` and `redis-sentinel` (`make debs` installs the latter), each on
a loopback port other than 6379, announcing 127.0.0.1, in a directory of the test's, and
stopped (SIGKILL if SIGTERM is not enough) when the context ends. Certificates are made
with `openssl`. Nothing here is persisted: `save ""`, no AOF.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

HOST = "127.0.0.1"
MASTER_PORT = 56379
REPLICA_PORT = 56380
# Not 26379: Debian's redis-sentinel package starts its own sentinel there where systemd runs.
SENTINEL_PORTS = (56381, 56382, 56383)
TLS_PORT = 56390
SERVICE = "welip"
START_TIMEOUT_S = 10.0
# Sentinel's failure detector and failover, short so the tests' failover takes seconds.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def require(command: str) -> str:
    """The path of ``command``; skip without it, except in CI where its absence is a failure."""
    path = shutil.which(command)
    if path is None:
        message = f"{command} is not installed (make debs installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _check_free(port: int) -> None:
    with socket.socket() as sock:
        if sock.connect_ex((HOST, port)) == 0:
            raise RuntimeError(f"port {HOST}:{port} is taken: stop what listens there before these tests")


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate it signed for 127.0.0.1, and a second, unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path


@dataclass
class Server:
    """One redis-server or redis-sentinel process of a test's."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL: the server dies without a word to its clients or replicas."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its connections open and never answers (a partition, a hung host)."""
        self.process.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def _start(args: list[str], port: int, log: Path, *, ping: redis.Redis | None = None) -> Server:
    _check_free(port)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = Server(port, process, log)
    client = ping or redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} on port {port} exited ({process.returncode}): {tail}")
        try:
            client.ping()
            break
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"{args[0]} on port {port} did not answer in {START_TIMEOUT_S} s"
                ) from None
            time.sleep(0.05)
    client.close()
    return server


def _client(port: int, ca: Path | None) -> redis.Redis:
    """A synchronous client of the fixtures' own, over TLS when ``ca`` is given."""
    if ca is None:
        return redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
    return redis.Redis(
        host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1, ssl=True, ssl_ca_certs=str(ca)
    )


def _tls_args(port: int, certs: Certificates) -> list[str]:
    return [
        "--port", "0",  # no plain TCP at all
        "--tls-port", str(port),
        "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "no",
        "--tls-replication", "yes",
    ]  # fmt: skip


def _redis_args(port: int, workdir: Path, name: str, certs: Certificates | None = None) -> list[str]:
    tls = _tls_args(port, certs) if certs is not None else []
    return [
        shutil.which("redis-server") or "redis-server",
        *([] if certs is not None else ["--port", str(port)]),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--dbfilename",
        f"{name}.rdb",
        "--logfile",
        str(workdir / f"{name}.log"),
        "--replica-announce-ip",
        HOST,
        # Redis waits 5 s by default for more replicas before a full sync: no one else comes.
        "--repl-diskless-sync-delay",
        "0",
        *tls,
    ]


@dataclass
class SentinelGroup:
    """A master, its replica and three sentinels watching them as ``SERVICE``."""

    master: Server
    replica: Server
    ca: Path | None = None  # every server and sentinel speaks TLS only, under this CA
    sentinels: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``WELIP_REDIS_URL`` for this group."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        scheme = "rediss+sentinel" if self.ca else "redis+sentinel"
        return f"{scheme}://{hosts}/{SERVICE}/0"

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it now."""
        for sentinel in self.sentinels:
            client = _client(sentinel.port, self.ca)
            try:
                _, port = client.sentinel_get_master_addr_by_name(SERVICE)
                return int(port)
            except (redis.ConnectionError, redis.TimeoutError, TypeError):
                continue
            finally:
                client.close()
        return None


def _wait(predicate_name: str, predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {predicate_name}")
        time.sleep(0.1)


@contextmanager
def sentinel_group(workdir: Path, certs: Certificates | None = None) -> Iterator[SentinelGroup]:
    """Start the group (TLS only with ``certs``), wait until every sentinel knows the replica and
    the two other sentinels."""
    sentinel_bin = require("redis-sentinel")
    workdir.mkdir(parents=True, exist_ok=True)
    ca = certs.ca if certs is not None else None
    with ExitStack() as stack:
        master_args = _redis_args(MASTER_PORT, workdir, "master", certs)
        master = _start(master_args, MASTER_PORT, workdir / "master.log", ping=_client(MASTER_PORT, ca))
        stack.callback(master.stop)
        replica_args = [
            *_redis_args(REPLICA_PORT, workdir, "replica", certs),
            "--replicaof",
            HOST,
            str(MASTER_PORT),
        ]
        replica = _start(replica_args, REPLICA_PORT, workdir / "replica.log", ping=_client(REPLICA_PORT, ca))
        stack.callback(replica.stop)
        replica_client = _client(REPLICA_PORT, ca)
        _wait(
            "the replica's link to its master",
            lambda: replica_client.info("replication").get("master_link_status") == "up",
            START_TIMEOUT_S,
        )
        replica_client.close()
        group = SentinelGroup(master, replica, ca)
        # Each sentinel told the others' ids and the replica up front: otherwise they find
        # each other through hello messages (every 2 s) and the setup takes seconds longer.
        ids = {port: secrets.token_hex(20) for port in SENTINEL_PORTS}
        for port in SENTINEL_PORTS:
            known = "".join(
                f"sentinel known-sentinel {SERVICE} {HOST} {other} {ids[other]}\n"
                for other in SENTINEL_PORTS
                if other != port
            )
            listen = f"port {port}\n"
            if certs is not None:
                listen = (
                    f"port 0\ntls-port {port}\ntls-cert-file {certs.server_cert}\n"
                    f"tls-key-file {certs.server_key}\ntls-ca-cert-file {certs.ca}\n"
                    "tls-auth-clients no\ntls-replication yes\n"
                )
            conf = workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"{listen}bind {HOST}\ndir {workdir}\nlogfile {workdir}/sentinel-{port}.log\n"
                f"sentinel announce-ip {HOST}\nsentinel resolve-hostnames no\n"
                f"sentinel monitor {SERVICE} {HOST} {MASTER_PORT} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                f"sentinel myid {ids[port]}\n{known}"
                f"sentinel known-replica {SERVICE} {HOST} {REPLICA_PORT}\n"
            )
            sentinel = _start(
                [sentinel_bin, str(conf)], port, workdir / f"sentinel-{port}.log", ping=_client(port, ca)
            )
            stack.callback(sentinel.stop)
            group.sentinels.append(sentinel)

        def agreed() -> bool:
            for s in group.sentinels:
                client = _client(s.port, ca)
                try:
                    if len(client.sentinel_slaves(SERVICE)) != 1:
                        return False
                    if len(client.sentinel_sentinels(SERVICE)) != len(SENTINEL_PORTS) - 1:
                        return False
                finally:
                    client.close()
            return True

        # Sentinels find each other through hello messages every 2 s: a failover needs a quorum.
        _wait("the sentinels to know the replica and each other", agreed, 20.0)
        yield group


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(workdir: Path) -> Certificates:
    """Make the certificates with ``openssl`` (EC P-256: fast to generate)."""
    require("openssl")
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=welip test {name}",
            cwd=workdir,
        )  # fmt: skip
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=workdir,
    )  # fmt: skip
    (workdir / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
        cwd=workdir,
    )  # fmt: skip
    return Certificates(
        workdir / "ca.pem", workdir / "server.pem", workdir / "server.key", workdir / "other-ca.pem"
    )


@contextmanager
def tls_server(
    workdir: Path, certs: Certificates, port: int = TLS_PORT, protocols: str = "TLSv1.2 TLSv1.3"
) -> Iterator[Server]:
    """A redis-server that speaks TLS only (``--port 0``), clients not asked for certificates."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [*_redis_args(port, workdir, f"tls-{port}", certs), "--tls-protocols", protocols]
    server = _start(args, port, workdir / f"tls-{port}.log", ping=_client(port, certs.ca))
    try:
        yield server
    finally:
        server.stop()
