"""A throwaway PostgreSQL for tests: Debian's initdb and postgres in a temp dir, listening on a
free 127.0.0.1 port, that a test may stop, kill and start again on the same port and data.

PostgreSQL refuses to run as root; as root, its binaries run as the `postgres` user, in a temp
dir that user owns. Without the binaries the tests that need them are skipped, except in CI
(CI=true), which installs them: there a missing server is a failure, not a skip."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from deploy.local.ports import free_port

POSTGRES_VERSIONS = Path("/usr/lib/postgresql")  # Debian: one bin/ per major version
DATABASE = "meshllm_auth"
_START_SECONDS = 30.0


def postgres_bin() -> Path:
    """The directory of initdb and postgres; skips the test (fails it in CI) without them."""
    for bin_dir in sorted(POSTGRES_VERSIONS.glob("*/bin"), reverse=True):
        if all((bin_dir / name).is_file() for name in ("initdb", "postgres")):
            return bin_dir
    message = f"PostgreSQL is not installed (no {POSTGRES_VERSIONS}/<version>/bin/initdb)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must apt-get install postgresql")
    pytest.skip(message)


class PostgresServer:
    """One PostgreSQL cluster in `root`; the port stays the same across stop/kill and start."""

    def __init__(self, bin_dir: Path, root: Path):
        self._bin = bin_dir
        self.root = root
        self.data_dir = root / "data"
        self.log_path = root / "postgres.log"
        self.port = free_port()
        self._process: subprocess.Popen | None = None

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        subprocess.run(self._as_owner(
            self._bin / "initdb", "-D", self.data_dir, "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"),
            cwd=self.root, check=True, capture_output=True)

    def start(self) -> None:
        """Starts the server and returns once it takes connections."""
        deadline = time.monotonic() + _START_SECONDS
        while True:
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(self._as_owner(
                    self._bin / "postgres", "-D", self.data_dir, "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                    # A test machine's crash is not the server's: skip the disk syncs.
                    "-c", "fsync=off", "-c", "full_page_writes=off"),
                    cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
            while self._process.poll() is None:
                if self._accepts_connections():
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"PostgreSQL did not start in {_START_SECONDS}s; "
                                       f"see {self.log_path}")
                time.sleep(0.05)
            # It exited: after a kill, the old server's backends may not have noticed yet that
            # their parent is gone, and hold its shared memory for a moment more.
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL exited on start; see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        """A clean shutdown: clients are disconnected, everything committed is on disk."""
        self._signal_postmaster(signal.SIGINT)

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown; committed transactions survive it."""
        self._signal_postmaster(signal.SIGKILL)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            # FILE_COPY: faster than the default WAL_LOG for a database as small as a test's.
            admin.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.url(name)

    def _signal_postmaster(self, signum: int) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        # The postmaster's own pid, not runuser's: runuser would not pass SIGKILL on.
        pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, signum)
        self._process.wait(_START_SECONDS)
        self._process = None

    def _accepts_connections(self) -> bool:
        try:
            psycopg.connect(self.url("postgres"), connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    @staticmethod
    def _as_owner(*command: object) -> list[str]:
        command = [str(part) for part in command]
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server with the database DATABASE (server.url()); removed at the end."""
    bin_dir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="meshllm-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = PostgresServer(bin_dir, root)
    try:
        server.init()
        server.start()
        server.create_database(DATABASE)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
