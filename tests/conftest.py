"""Shared fixtures: real PostgreSQL servers, one per installation found.

- ``installation``: an :class:`~replicant.cluster.Installation`; every test
  that uses it (directly or through ``cluster``/``db``) runs once per
  PostgreSQL build found, with ids telling builds apart: ``pg15.18``,
  ``pg16.2``, ``pg16.14``, ... Builds come from ``find_installations()``
  (``REPLICANT_PG_BINDIRS`` included) and ``--pg-bindir DIR`` (repeatable).
  ``pytest --pg 15`` (a major) or ``--pg 16.2`` (a release) restricts the run.
- The split that keeps a run of every build affordable: the *full* builds
  (the newest one, and those of the system's packages: ``pg_config``,
  ``PATH``, ``/usr/lib/postgresql``) run every server test; the other builds
  run the version-sensitive modules (``VERSION_SENSITIVE``) and tests marked
  ``@pytest.mark.every_version``. Builds chosen with ``--pg``, or every build
  with ``--pg-full``, run everything.
- ``cluster``: the shared, session-wide :class:`~replicant.cluster.LocalCluster`
  for that installation, started on first use, stopped at session end. Keep
  its settings as they are; a test that needs other settings, or that stops
  or restarts the server, makes its own with ``make_cluster``.
- ``make_cluster(**kwargs)``: a started private cluster (``LocalCluster``
  arguments; same installation as the test's ``installation`` unless
  ``bindir``/``version`` is given), stopped when the test ends.
- ``make_module_cluster(**kwargs)``: the same for a module-scoped fixture
  (a server with other settings shared by a module's tests): the newest
  selected installation unless ``bindir``/``version`` is given, stopped
  when the module ends.
- ``make_db(cluster=None, prefix="t")``: a fresh database (:class:`Database`)
  in ``cluster`` (default: the shared one), dropped when the test ends.
- ``db``: ``make_db()`` once, for one test; its replication slots, prepared
  transactions and the database itself are dropped at teardown.
- ``wal2json_db``: ``db``, or a skip when the installation lacks wal2json.
  ``@pytest.mark.requires_plugin("name", ...)`` does the same for any test.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

from replicant.cluster import Installation, LocalCluster, find_installations

from .helpers import Background

# How long teardown keeps trying to drop a slot that is still active: the
# walsender holding it needs a moment to exit after its client goes away.
_DROP_TIMEOUT = 15.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pg",
        action="append",
        default=[],
        metavar="MAJOR",
        help="run server tests only against this PostgreSQL major version or release "
        "(15, 16.2; repeatable); the chosen builds run the full suite",
    )
    parser.addoption(
        "--pg-bindir",
        action="append",
        default=[],
        metavar="DIR",
        help="test the PostgreSQL build in DIR too (repeatable; REPLICANT_PG_BINDIRS "
        "lists more, os.pathsep-separated)",
    )
    parser.addoption(
        "--pg-full",
        action="store_true",
        default=False,
        help="run every server test on every build, not only the version-sensitive ones",
    )


#: Test modules run on every build found; the rest run on the full builds.
VERSION_SENSITIVE = frozenset(
    {
        "test_connection",
        "test_decoders_integration",
        "test_runtime",
        "test_faults",
        "test_cluster",
        "test_versions",
    }
)
_SYSTEM_SOURCES = frozenset({"pg_config", "path", "debian"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_plugin(*names): skip unless the test's PostgreSQL has these output plugins",
    )
    config.addinivalue_line(
        "markers",
        "every_version: run on every PostgreSQL build, not only the full ones",
    )


def selected_installations(config: pytest.Config) -> list[Installation]:
    """The installations this run tests against, newest first."""
    found = find_installations(bindirs=config.getoption("--pg-bindir"))
    wanted = {v.removeprefix("pg") for v in config.getoption("--pg")}
    return [i for i in found if not wanted or str(i.version) in wanted or i.release in wanted]


def full_installations(config: pytest.Config) -> list[Installation]:
    """The selected installations that run every server test (see the module doc)."""
    selected = selected_installations(config)
    if config.getoption("--pg") or config.getoption("--pg-full"):
        return selected
    return [i for n, i in enumerate(selected) if n == 0 or i.source in _SYSTEM_SOURCES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "installation" in metafunc.fixturenames:
        module = metafunc.module.__name__.rpartition(".")[2]
        every = module in VERSION_SENSITIVE or any(
            m.name == "every_version" for m in metafunc.definition.iter_markers()
        )
        if every:
            installs = selected_installations(metafunc.config)
        else:
            installs = full_installations(metafunc.config)
        metafunc.parametrize(
            "installation",
            installs,
            ids=[i.label for i in installs],
            scope="session",
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Checked before fixtures run, so a skipped test starts no server.
    marker = item.get_closest_marker("requires_plugin")
    if marker is None:
        return
    callspec = getattr(item, "callspec", None)
    installation = callspec.params.get("installation") if callspec is not None else None
    if not isinstance(installation, Installation):
        raise pytest.UsageError(
            f"{item.nodeid}: requires_plugin needs a test using cluster, db or installation"
        )
    missing = [name for name in marker.args if not installation.has_plugin(name)]
    if missing:
        pytest.skip(f"PostgreSQL {installation.version} lacks {', '.join(missing)}")


class ClusterPool:
    """The session's shared clusters: one per installation, started on demand.

    A cluster that failed to start is not tried again: later tests get the
    same error at once. A shared cluster that died (a test crashed it) is
    started again, with its data and port, on next use.
    """

    def __init__(self) -> None:
        self._clusters: dict[str, LocalCluster] = {}
        self._failures: dict[str, BaseException] = {}

    def get(self, installation: Installation) -> LocalCluster:
        key = str(installation.bindir)
        if key in self._failures:
            raise self._failures[key]
        cluster = self._clusters.get(key)
        if cluster is None:
            cluster = self._clusters[key] = LocalCluster(bindir=installation.bindir)
        if not cluster.running:
            try:
                cluster.start()
            except Exception as exc:
                self._failures[key] = exc
                raise
        return cluster

    def close(self) -> None:
        for cluster in self._clusters.values():
            cluster.stop("immediate")
        self._clusters.clear()


@pytest.fixture(scope="session")
def cluster_pool() -> Iterator[ClusterPool]:
    pool = ClusterPool()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def cluster(installation: Installation, cluster_pool: ClusterPool) -> LocalCluster:
    """The shared cluster for the test's installation (default settings)."""
    return cluster_pool.get(installation)


def newest_installation(config: pytest.Config) -> Installation:
    """The newest installation this run tests against; the test is skipped if none."""
    installs = selected_installations(config)
    if not installs:
        pytest.skip("no PostgreSQL installation found")
    return installs[0]


class ClusterFactory:
    """Makes started private clusters; :meth:`close` stops every one it made.

    ``default_bindir`` names the build used when the arguments give neither
    ``bindir`` nor ``version``. A cluster that fails to start is stopped too
    (its directory removed) and the error raised to the caller.
    """

    def __init__(self, default_bindir: Callable[[], Path]) -> None:
        self._default_bindir = default_bindir
        self._made: list[LocalCluster] = []

    def __call__(self, **kwargs: Any) -> LocalCluster:
        if "bindir" not in kwargs and "version" not in kwargs:
            kwargs["bindir"] = self._default_bindir()
        new = LocalCluster(**kwargs)
        self._made.append(new)
        new.start()
        return new

    def close(self) -> None:
        for made in self._made:
            made.stop("immediate")
        self._made.clear()


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """A factory of started private clusters, all stopped when the test ends."""

    def default_bindir() -> Path:
        if "installation" in request.fixturenames:
            installation: Installation = request.getfixturevalue("installation")
            return installation.bindir
        return newest_installation(request.config).bindir

    factory = ClusterFactory(default_bindir)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def make_module_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """A factory of started private clusters, all stopped when the module ends.

    For a module-scoped fixture that shares a server with other settings
    among a module's tests; the newest selected installation by default.
    """
    factory = ClusterFactory(lambda: newest_installation(request.config).bindir)
    yield factory
    factory.close()


class Database:
    """One database in a cluster, with small autocommit SQL helpers.

    ``execute``/``query`` share one autocommit connection, reopened when it
    was closed (e.g. by a server restart).
    """

    def __init__(self, cluster: LocalCluster, dbname: str) -> None:
        self.cluster = cluster
        self.dbname = dbname
        self._conn: psycopg2.extensions.connection | None = None
        self._dropped = False

    @property
    def dsn(self) -> str:
        """libpq key/value string for this database over TCP."""
        return self.cluster.dsn_for(self.dbname)

    def dsn_with(self, **overrides: str | int | None) -> str:
        """This database's DSN with libpq keywords replaced (None drops one)."""
        return self.cluster.dsn_for(self.dbname, **overrides)

    def connect(self, **overrides: Any) -> psycopg2.extensions.connection:
        """A new psycopg2 connection (not autocommit); the caller closes it."""
        return self.cluster.connect(self.dbname, **overrides)

    def _cursor_conn(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
            self._conn.autocommit = True
        return self._conn

    def execute(self, sql: str, *params: Any) -> None:
        """Run one statement in autocommit mode."""
        with self._cursor_conn().cursor() as cur:
            cur.execute(sql, params or None)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode and return its rows."""
        with self._cursor_conn().cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchall())

    def close(self) -> None:
        """Close the helper connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def drop(self) -> None:
        """Drop this database's replication slots and prepared transactions, then it.

        Safe to call twice. A slot stays active for a moment after its
        connection closes; dropping it is retried, and its walsender is
        terminated if it lingers.
        """
        self.close()
        if self._dropped or not self.cluster.running:
            return
        admin = self.cluster.connect("postgres", connect_timeout=5)
        try:
            admin.autocommit = True
            with admin.cursor() as cur:
                self._drop_slots(cur)
                cur.execute("SELECT gid FROM pg_prepared_xacts WHERE database = %s", (self.dbname,))
                gids = [row[0] for row in cur.fetchall()]
            if gids:
                self._rollback_prepared(gids)
            self._drop_database(admin)
        finally:
            admin.close()
        self._dropped = True

    def _drop_slots(self, cur: psycopg2.extensions.cursor) -> None:
        deadline = time.monotonic() + _DROP_TIMEOUT
        while True:
            cur.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                (self.dbname,),
            )
            slots = cur.fetchall()
            if not slots:
                return
            for slot_name, active_pid in slots:
                if active_pid is not None:
                    cur.execute("SELECT pg_terminate_backend(%s)", (active_pid,))
                # Still active (its walsender is exiting) or already gone.
                with contextlib.suppress(
                    psycopg2.errors.ObjectInUse, psycopg2.errors.UndefinedObject
                ):
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"could not drop replication slots {[s[0] for s in slots]} "
                    f"of database {self.dbname}"
                )
            time.sleep(0.05)

    def _rollback_prepared(self, gids: list[str]) -> None:
        # ROLLBACK PREPARED works only from the database that prepared it.
        conn = self.connect(connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for gid in gids:
                    cur.execute("ROLLBACK PREPARED %s", (gid,))
        finally:
            conn.close()

    def _drop_database(self, admin: psycopg2.extensions.connection) -> None:
        ident = '"' + self.dbname.replace('"', '""') + '"'
        deadline = time.monotonic() + _DROP_TIMEOUT
        with admin.cursor() as cur:
            while True:
                try:
                    if self.cluster.version >= 13:
                        cur.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
                    else:
                        cur.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()",
                            (self.dbname,),
                        )
                        cur.execute(f"DROP DATABASE IF EXISTS {ident}")
                    return
                except psycopg2.errors.ObjectInUse:
                    # A slot made since we looked, or a backend still exiting.
                    if time.monotonic() > deadline:
                        raise
                    self._drop_slots(cur)
                    time.sleep(0.05)


def _database_name(request: pytest.FixtureRequest, prefix: str = "t") -> str:
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    return f"{prefix}_{base[:40]}_{secrets.token_hex(4)}"


#: ``make_db(cluster=None, *, prefix="t")``: see the ``make_db`` fixture.
DatabaseFactory = Callable[..., Database]


@pytest.fixture
def make_db(request: pytest.FixtureRequest) -> Iterator[DatabaseFactory]:
    """A factory of fresh databases, each dropped (with its slots) after the test.

    ``make_db(cluster)`` makes one in ``cluster``; without it, in the shared
    ``cluster`` of the test's installation. ``prefix`` starts the name.
    """
    made: list[Database] = []

    def make(cluster: LocalCluster | None = None, *, prefix: str = "t") -> Database:
        if cluster is None:
            cluster = request.getfixturevalue("cluster")
        assert cluster is not None
        cluster.start()  # no-op unless an earlier test crashed or stopped the server
        database = Database(cluster, _database_name(request, prefix))
        cluster.create_database(database.dbname)
        made.append(database)
        return database

    yield make
    for database in reversed(made):
        database.drop()


@pytest.fixture
def db(cluster: LocalCluster, make_db: DatabaseFactory) -> Database:
    """A fresh database in ``cluster``, dropped (with its slots) after the test."""
    return make_db(cluster)


@pytest.fixture
def wal2json_db(installation: Installation, request: pytest.FixtureRequest) -> Database:
    """``db`` in a cluster that has wal2json; the test is skipped otherwise."""
    if not installation.has_plugin("wal2json"):
        pytest.skip(f"PostgreSQL {installation.version} lacks wal2json")
    database: Database = request.getfixturevalue("db")
    return database


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    """Start ``python -m replicant ARGS`` in the background; each is killed at the end."""
    started: list[Background] = []

    def start(*args: str, read_stdout: bool = True) -> Background:
        process = Background(*args, read_stdout=read_stdout)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
