"""A throwaway PostgreSQL server for tests: initdb into a temp folder, pg_ctl start/stop on a free port.

The server can be stopped and started again on the same port and data folder (an outage that the
store must ride out). Tests get it through the session fixture `pg_server` (tests/conftest.py), which
skips when the server binaries or psycopg are missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


class Unavailable(Exception):
    """PostgreSQL cannot be run here (no binaries, no driver, no user to run it as): the test skips."""


def pg_bin() -> Path | None:
    """The folder with initdb, pg_ctl and postgres ($ATHANOR_PG_BIN, a Debian layout, or the PATH)."""
    candidates = [os.environ.get("ATHANOR_PG_BIN", ""), "/usr/lib/postgresql/15/bin",
                  *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    which = shutil.which("pg_ctl")
    if which:
        candidates.append(str(Path(which).parent))
    for folder in candidates:
        if folder and all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _temp_parent() -> str | None:
    """A temp folder the `postgres` user can reach (a root-only TMPDIR would lock it out)."""
    if os.geteuid() != 0:
        return None
    base = Path(tempfile.gettempdir()).resolve()
    if all(os.stat(p).st_mode & 0o001 for p in [base, *base.parents]):
        return str(base)
    return "/tmp"


class PostgresServer:
    """One PostgreSQL cluster in a temp folder, listening on 127.0.0.1:`port` (trust auth, user postgres).

    `start()` runs initdb the first time; `stop()` then `start()` brings the same cluster back on the same
    port. `cleanup()` stops it and removes the folder.
    """

    def __init__(self, bin_dir: Path | None = None, port: int | None = None):
        self.bin = bin_dir or pg_bin()
        if self.bin is None:
            raise Unavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise Unavailable("psycopg (the PostgreSQL driver) is not installed") from None
        self._owner = None
        if os.geteuid() == 0:
            import pwd

            try:
                self._owner = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no 'postgres' user to run the server as") from None
            if shutil.which("runuser") is None:
                raise Unavailable("running as root and 'runuser' is not available")
        self.port = port or free_port()
        self.root: Path | None = None
        self.running = False

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    def _run(self, args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(as_postgres(args), check=True, capture_output=True, text=True, timeout=120)

    def _init(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="athanor-pg-", dir=_temp_parent()))
        sockets = self.root / "sock"
        sockets.mkdir()
        if self._owner is not None:
            for path in (self.root, sockets):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                   "--no-sync", "--no-instructions"])

    def start(self) -> PostgresServer:
        if self.running:
            return self
        if self.root is None:
            self._init()
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.root / 'sock'} -F "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                       "-o", options, "start"])
        except subprocess.CalledProcessError as exc:
            text = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start on port {self.port}: {exc.stderr}\n{text[-3000:]}") from None
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: open connections are cut, as in an outage); its data stays."""
        if not self.running:
            return
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])
        self.running = False

    def cleanup(self) -> None:
        try:
            if self.running:
                subprocess.run(as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                            "-w", "stop"]), capture_output=True, timeout=120)
                self.running = False
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}",
                               autocommit=True, connect_timeout=10)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (a fresh name by default); returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
