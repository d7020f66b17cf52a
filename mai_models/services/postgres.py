"""A PostgreSQL server of our own: a cluster initialised in a directory we choose, listening on
127.0.0.1 and a free port only, with trust authentication for one user. The server refuses to run as
root, so under root every server command runs as the ``postgres`` user that Debian's package creates;
when that user cannot enter the directory (pytest's and ``TemporaryDirectory``'s are 0700), the cluster
lives in a directory of its own under the system temp dir instead, removed by ``discard``.

Dagster (``dagster-postgres``) and the MLflow server (``postgresql+psycopg2://``) keep their state here.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.services.process import HOST, free_port, log_tail

SERVER_USER = "postgres"
DEFAULT_USER = "mai"


def postgres_bin() -> Path:
    """The newest installed server's bin directory (Debian keeps them out of PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise MaiUserError("PostgreSQL is not installed: run `make system-tools` as root (Debian `postgresql`)")


class Postgres:
    """``with Postgres(directory) as pg:`` a running server; ``pg.url("db")`` for clients."""

    def __init__(self, directory: Path, port: int | None = None, user: str = DEFAULT_USER) -> None:
        self.directory = Path(directory)
        self.home = self.directory  # where the cluster lives (see _prepare_home)
        self.port = port or free_port()
        self.user = user
        self._bin: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log(self) -> Path:
        return self.home / "postgres.log"

    # ------------------------------------------------------------------------------------ clients
    def url(self, database: str, driver: str = "psycopg2") -> str:
        """SQLAlchemy URL (the driver is explicit: SQLAlchemy 2.1 defaults to psycopg 3)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@{HOST}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:  # a psycopg2 connection
        import psycopg2

        return psycopg2.connect(host=HOST, port=self.port, user=self.user, dbname=database, connect_timeout=5)

    def create_database(self, name: str) -> str:
        """Create ``name`` unless it exists; returns its URL."""
        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    # ---------------------------------------------------------------------------------- lifecycle
    @property
    def pid(self) -> int | None:
        """The postmaster's PID, from the pid file of our own data directory."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def running(self) -> bool:
        """Our postmaster is alive: the PID in our pid file runs a postgres on our data directory
        (a stale pid file's PID may belong to another process by now)."""
        pid = self.pid
        if pid is None:
            return False
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return str(self.data_dir).encode() in command

    def start(self, timeout: float = 60.0) -> Postgres:
        self._bin = postgres_bin()
        self._prepare_home()
        data = ["-D", str(self.data_dir)]
        if not (self.data_dir / "PG_VERSION").exists():
            initdb = ["initdb", *data, "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync"]
            self._server_command(initdb, "initdb")
        options = f"-k {shlex.quote(str(self.home))} -p {self.port} -c listen_addresses={HOST}"
        wait = ["-w", "-t", str(int(timeout))]
        self._server_command(
            ["pg_ctl", *data, "-o", options, "-l", str(self.log), *wait, "start"], "pg_ctl start"
        )
        self._wait_for_connections(timeout)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown of our postmaster (pg_ctl signals the PID in our data directory), then
        SIGKILL of that PID if it is still there."""
        if not self.running():
            return
        pid = self.pid
        wait = ["-w", "-t", str(int(timeout))]
        try:
            self._server_command(
                ["pg_ctl", "-D", str(self.data_dir), "-m", "fast", *wait, "stop"], "pg_ctl stop"
            )
        except MaiUserError:
            if pid is not None and self.running():
                os.kill(pid, signal.SIGKILL)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop and start again on the same port and data (clients must reconnect)."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.discard()

    # ------------------------------------------------------------------------------------ helpers
    def _prepare_home(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        if self.home == self.directory and not self._owned_by_server(self.directory):
            self.home = Path(tempfile.mkdtemp(prefix="mai-pg-"))
            if not self._owned_by_server(self.home):
                raise MaiUserError(f"the {SERVER_USER} user cannot reach {self.home} nor {self.directory}")

    def _owned_by_server(self, directory: Path) -> bool:
        """Hand ``directory`` to the server's user (0700) and check that it can write there."""
        user = pwd.getpwnam(SERVER_USER)
        os.chown(directory, user.pw_uid, user.pw_gid)
        directory.chmod(0o700)
        reach = subprocess.run(
            ["su", SERVER_USER, "-s", "/bin/sh", "-c", f"test -w {shlex.quote(str(directory))}"],
            capture_output=True,
        )
        return reach.returncode == 0

    def discard(self) -> None:
        """Stop, and remove a cluster that had to live outside ``directory``."""
        self.stop()
        if self.home != self.directory:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = self.directory

    def _server_command(self, argv: list[str], what: str) -> None:
        assert self._bin is not None
        command = [str(self._bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["su", SERVER_USER, "-s", "/bin/sh", "-c", shlex.join(command)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            output = " | ".join(ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip())
            raise MaiUserError(
                f"PostgreSQL {what} failed in {self.data_dir}: {output[-400:] or 'no output'}; "
                f"log: {log_tail(self.log)}"
            )

    def _wait_for_connections(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise MaiUserError(
                        f"PostgreSQL on {HOST}:{self.port} does not accept connections: "
                        f"{str(exc).strip().splitlines()[0]}; log: {log_tail(self.log)}"
                    ) from exc
            time.sleep(0.2)
