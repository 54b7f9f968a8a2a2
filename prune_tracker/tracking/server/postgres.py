"""The PostgreSQL cluster of a team server: private to its root, listening on 127.0.0.1 and a socket in the root,
password kept in ``<root>/pgpass`` (0600 from creation)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from prune_tracker.tracking.server.config import (
    DEFAULT_PG_PORT,
    ServerError,
    last_error_line,
    port_in_use,
    write_private,
)

PG_USER = "prune_tracker"
INSTALL_HINT = "install Debian's postgresql package (apt-get update && apt-get install -y postgresql)"


def _make_parents(path: Path) -> None:
    """The missing folders above `path`, 0755 like `mkdir -p` (they hold nothing but the root; as root, the
    postgres user must pass through them)."""
    missing = [p for p in path.parents if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)


def find_pg_bin() -> Path:
    """The newest PostgreSQL server binaries: ``$PG_BIN``, Debian's /usr/lib/postgresql/<v>/bin, or PATH."""
    if os.environ.get("PG_BIN"):
        candidates = [Path(os.environ["PG_BIN"])]
    else:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version_key(p.parent.name))
        candidates = list(reversed(versions))
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise ServerError(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {INSTALL_HINT} or set PG_BIN")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


class PostgresCluster:
    """A PostgreSQL cluster private to one server root, listening on 127.0.0.1:``port`` and a socket in the root.

    As root, PostgreSQL refuses to run: the cluster then belongs to the ``postgres`` user (``runuser``), which must
    be able to enter the root. Connections use scram-sha-256 with a password generated at ``initdb`` and kept in
    ``<root>/pgpass`` (0600), handed to libpq as ``PGPASSFILE``."""

    def __init__(self, root: Path, port: int = DEFAULT_PG_PORT):
        self.root, self.port = root, port
        self.dir = root / "postgres"
        self.data, self.socket, self.log = self.dir / "data", self.dir / "socket", self.dir / "postgres.log"
        self.passfile = root / "pgpass"
        self._bin: Path | None = None

    @property
    def bin(self) -> Path:
        if self._bin is None:
            self._bin = find_pg_bin()
        return self._bin

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    def env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.passfile)}

    def uri(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _owned(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else cmd

    def _run(self, cmd: list[str], what: str, timeout: float = 120) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run(self._owned(cmd), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ServerError(f"{what} did not finish within {timeout:.0f} s (see {self.log})") from None
        if done.returncode != 0:
            raise ServerError(f"{what} failed: {last_error_line(done.stderr + done.stdout)}")
        return done

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def _prepare_dirs(self) -> None:
        """The root 0700 (as root: 0710, group postgres: the cluster's user may pass through it, see nothing),
        the cluster's folders 0700 and, as root, the postgres user's."""
        _make_parents(self.root)
        self.root.mkdir(mode=0o700, exist_ok=True)
        account = self._postgres_account() if self.as_root else None
        if account is not None:
            os.chown(self.root, -1, account.pw_gid)
        os.chmod(self.root, 0o710 if account is not None else 0o700)
        for directory in (self.dir, self.socket):
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        if account is None:
            return
        for directory in (self.dir, self.socket):
            os.chown(directory, account.pw_uid, account.pw_gid)
        if subprocess.run(self._owned(["test", "-w", str(self.dir)])).returncode != 0:
            raise ServerError(f"the postgres user cannot enter {self.dir}; choose a --root every user may traverse "
                              "(e.g. /var/lib/prune-tracker/server), not one under /root or a 0700 directory")

    @staticmethod
    def _postgres_account():
        import pwd

        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise ServerError(f"running as root needs the `postgres` user to own the cluster; {INSTALL_HINT}") from None

    def init(self) -> None:
        """``initdb`` a new cluster (superuser ``prune_tracker``, generated password written to ``pgpass``)."""
        self._prepare_dirs()
        if self.initialized:
            if not self.passfile.is_file():
                raise ServerError(f"{self.passfile} is missing for the existing cluster in {self.data}; restore it "
                                  "or remove the root to start afresh")
            return
        password = secrets.token_urlsafe(24)
        pwfile = self.dir / "initdb-password"
        write_private(pwfile, password + "\n")
        try:
            if self.as_root:
                shutil.chown(pwfile, "postgres")
            self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_USER, f"--pwfile={pwfile}",
                       "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--no-instructions"],
                      "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        write_private(self.passfile, f"127.0.0.1:*:*:{PG_USER}:{password}\n")

    def running_port(self) -> int | None:
        """The port of the postmaster running on this data directory, None if none runs."""
        if not (self.data / "postmaster.pid").is_file():
            return None
        if subprocess.run(self._owned([str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]),
                          capture_output=True).returncode != 0:  # fmt: skip
            return None
        lines = (self.data / "postmaster.pid").read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def start(self) -> bool:
        """Start the cluster; False when it was already running (on this port), so the caller must not stop it."""
        running = self.running_port()
        if running is not None:
            if running != self.port:
                raise ServerError(f"the cluster in {self.data} already runs on port {running}, not pg_port="
                                  f"{self.port}; stop it or pass --pg-port {running}")
            return False
        if port_in_use(self.port):
            raise ServerError(f"pg_port={self.port} is already in use on 127.0.0.1; choose another --pg-port")
        options = f"-p {self.port} -k {self.socket} -c listen_addresses=127.0.0.1"
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                   "-w", "-t", "60", "start"], f"starting PostgreSQL (log: {self.log})")  # fmt: skip
        return True

    def stop(self) -> None:
        if self.running_port() is not None:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"],
                      "stopping PostgreSQL")

    def ensure_database(self, name: str) -> bool:
        """Create database ``name`` when missing; True when it was created (the name quoted by psycopg, never
        pasted into SQL)."""
        try:
            import psycopg
            from psycopg import sql
        except ImportError:
            raise ServerError("the PostgreSQL driver is missing; pip install 'prune-tracker[server]' "
                              "(psycopg[binary])") from None
        conninfo = f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres passfile={self.passfile}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
