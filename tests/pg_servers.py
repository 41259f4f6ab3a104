"""PostgreSQL 15 servers a test starts and stops itself: a primary, a streaming standby, TLS.

Debian's binaries (``/usr/lib/postgresql/15/bin``) run as user ``postgres`` when the tests
run as root (PostgreSQL refuses root). Every server listens on 127.0.0.1 only, on a free
port (never 5432), with its socket and data in a directory of its own under /tmp, removed
when it stops. ``fsync=off``: a test's data need not survive a power cut, and the servers
start and write faster without it; a fast stop still writes everything.

Certificates come from ``openssl``: :func:`make_certificates` makes a CA and server
certificates for the names a test asks for.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT_S = 60


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.getuid() == 0 else argv


def _run(argv: list[str], timeout_s: float = START_TIMEOUT_S) -> None:
    done = subprocess.run(_as_postgres(argv), capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr or done.stdout}")


def _own(path: Path) -> None:
    if os.getuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass
class PgServer:
    """One PostgreSQL server: its data directory, port and ``pg_ctl``."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "start"])

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` (``fast``: clients are disconnected, ``immediate``: a crash)."""
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def promote(self) -> None:
        """Make this standby a primary (returns once it accepts writes)."""
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "promote"])

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def configure(self, **settings: str | int) -> None:
        """Append ``settings`` to postgresql.conf (later lines win; read at the next start)."""
        with open(self.data / "postgresql.conf", "a") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = '{value}'\n" if isinstance(value, str) else f"{name} = {value}\n")

    def log(self) -> str:
        return (self.root / "log").read_text(errors="replace") if (self.root / "log").exists() else ""

    def remove(self) -> None:
        if self.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    _own(root)
    return root


def init_primary(*, synchronous_standby: bool = False, **settings: str | int) -> PgServer:
    """``initdb`` a primary that streams WAL to standbys (not started)."""
    server = PgServer(_root("welip-pg-primary-"), free_port())
    _run([str(PG_BIN / "initdb"), "-D", str(server.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    server.configure(
        listen_addresses="127.0.0.1",
        port=server.port,
        unix_socket_directories=str(server.root),
        wal_level="replica",
        max_wal_senders=5,
        hot_standby="on",
        fsync="off",
        # Commits wait for the standby's flush: a failover loses no committed row.
        synchronous_standby_names="*" if synchronous_standby else "",
        **settings,
    )
    return server


def start_standby(primary: PgServer) -> PgServer:
    """A hot standby of ``primary`` (``pg_basebackup -R``), streaming, started."""
    standby = PgServer(_root("welip-pg-standby-"), free_port())
    _run(
        [
            str(PG_BIN / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(standby.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ]
    )
    standby.configure(
        port=standby.port, unix_socket_directories=str(standby.root), synchronous_standby_names=""
    )
    standby.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT state FROM pg_stat_replication").fetchone()
            if row is not None and row[0] == "streaming":
                return standby
            time.sleep(0.1)
    raise RuntimeError(
        f"the standby on {standby.port} did not stream in {START_TIMEOUT_S} s:\n{standby.log()}"
    )


@contextlib.contextmanager
def primary_and_standby(synchronous: bool = True) -> Iterator[tuple[PgServer, PgServer]]:
    """A started primary and its streaming hot standby; both stopped and removed after."""
    primary = init_primary(synchronous_standby=synchronous)
    standby: PgServer | None = None
    try:
        primary.start()
        standby = start_standby(primary)
        yield primary, standby
    finally:
        if standby is not None:
            standby.remove()
        primary.remove()


@dataclass(frozen=True)
class Certificates:
    """A CA and server key pairs it signed, as PEM files in ``root``."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr}")


def make_certificates(root: Path, ca_name: str, servers: dict[str, str]) -> Certificates:
    """A CA named ``ca_name`` and, per ``servers`` entry, a server certificate with that SAN.

    Args:
        root: Where the files go (made if missing).
        ca_name: The CA's common name.
        servers: file stem -> subjectAltName (``"IP:127.0.0.1,DNS:localhost"``).
    """
    root.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", f"/CN={ca_name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=root,
    )  # fmt: skip
    for stem, san in servers.items():
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={stem}",
            cwd=root,
        )  # fmt: skip
        (root / f"{stem}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
        _openssl(
            "x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{stem}.crt", "-days", "2", "-extfile", f"{stem}.ext",
            cwd=root,
        )  # fmt: skip
    return Certificates(root)


@contextlib.contextmanager
def tls_server(certificate: Path, key: Path, *, tls_version: str = "TLSv1.3") -> Iterator[PgServer]:
    """A PostgreSQL server that takes only TLS connections over TCP, with ``certificate``,
    offering ``tls_version`` and newer (``TLSv1.2``: a server stuck at 1.2, for refusals)."""
    server = init_primary()
    try:
        for source, name in ((certificate, "server.crt"), (key, "server.key")):
            target = server.data / name
            shutil.copy(source, target)
            target.chmod(0o600)
            _own(target)
        server.configure(ssl="on", ssl_cert_file="server.crt", ssl_key_file="server.key")
        if tls_version == "TLSv1.2":
            server.configure(ssl_min_protocol_version="TLSv1.2", ssl_max_protocol_version="TLSv1.2")
        else:
            server.configure(ssl_min_protocol_version=tls_version)
        with open(server.data / "pg_hba.conf", "w") as hba:
            # Sockets for pg_ctl; TCP only over TLS.
            hba.write("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
        server.start()
        yield server
    finally:
        server.remove()
