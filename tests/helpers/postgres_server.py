"""A throw-away PostgreSQL server for tests: its own cluster in a temporary directory, on a free
port of 127.0.0.1, with a password-protected role, removed with everything in it afterwards.

The server binaries come from `pg_config --bindir` (Debian keeps initdb and pg_ctl there, off
PATH) or the newest /usr/lib/postgresql/*/bin; `.ci/postgres-binaries` installs them. Under CI
(`CI=true`) missing binaries or a missing driver fail the tests instead of skipping them, so
that a runner without PostgreSQL never passes silently. PostgreSQL refuses to run as root: as
root, the cluster belongs to the `postgres` user (or `nobody`) and every server command runs as
that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

USER = "litv2"  # the cluster's superuser, created by initdb with a password


def server_bindir() -> Path | None:
    """Where initdb and pg_ctl are, or None."""
    candidates = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if found.returncode == 0:
            candidates.append(found.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    return next((Path(c) for c in candidates if c and (Path(c) / "initdb").is_file()), None)


def bindir_or_skip() -> Path:
    """The server binaries and the psycopg driver, or a skip with the reason (a failure under CI)."""
    missing = []
    bindir = server_bindir()
    if bindir is None:
        missing.append("PostgreSQL server binaries (no initdb in `pg_config --bindir` or /usr/lib/postgresql/*/bin; "
                       "run .ci/postgres-binaries)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing.append("the psycopg driver (pip install -e '.[postgres]')")
    if missing:
        reason = "needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    assert bindir is not None
    return bindir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One cluster; `start`, `stop` and `start` again keep its data and its port."""

    def __init__(self, bindir: Path, root: Path, owner: str | None):
        self.bindir, self.root, self.owner = bindir, root, owner
        self.data, self.log = root / "data", root / "server.log"
        self.password = "pw-" + secrets.token_hex(12)
        self.port = free_port()
        self._databases = 0

    def url(self, database: str, password: str | None = None) -> str:
        return f"postgresql+psycopg://{USER}:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        self._own(password_file)
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={password_file}", "--auth=scram-sha-256",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        password_file.unlink()

    def start(self) -> None:
        socket_dir = shlex.quote(str(self.data))  # not /var/run/postgresql, which may not exist
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={socket_dir}"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every client's connection at once, as a crashed or restarted server would."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return subprocess.run(self._as_owner("pg_ctl", "-D", str(self.data), "status"),
                              capture_output=True).returncode == 0

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(self._as_owner(program, *args), capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}\n{log}")

    def _as_owner(self, program: str, *args: str) -> list[str]:
        command = [str(self.bindir / program), *args]
        return ["runuser", "-u", self.owner, "--", *command] if self.owner else command

    def _own(self, path: Path) -> None:
        if self.owner:
            entry = pwd.getpwnam(self.owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _unprivileged_owner() -> str | None:
    """None when not root; else a user PostgreSQL accepts to run as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.fail("running as root and neither a `postgres` nor a `nobody` user exists to run the server as",
                pytrace=False)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, stopped and deleted on the way out however the block ends."""
    bindir = bindir_or_skip()
    owner = _unprivileged_owner()
    root = Path(tempfile.mkdtemp(prefix="litv2-postgres-"))  # directly under /tmp: the owner must reach it
    server = PostgresServer(bindir, root, owner)
    try:
        server._own(root)
        server.init()
        for attempt in range(3):  # the free port may have been taken in the meantime
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()
        yield server
    finally:
        try:
            if server.data.is_dir() and server.running():
                try:
                    server.stop("fast")
                except RuntimeError:
                    server.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)
