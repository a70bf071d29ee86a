"""LocalCluster against the real servers of this machine."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest

import replicant.cluster as cluster_module
from replicant.cluster import (
    ClusterError,
    Installation,
    LocalCluster,
    ShutdownMode,
    find_installations,
)
from replicant.errors import ConfigurationError, ReplicantError

if TYPE_CHECKING:
    from .conftest import Database

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin/postgres")
DEBIAN_15_WAL2JSON = Path("/usr/lib/postgresql/15/lib/wal2json.so")
MakeCluster = Callable[..., LocalCluster]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    return not cluster_module._pid_alive(pid)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a listening socket for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- discovery ---------------------------------------------------------------


def test_find_installations_one_per_release_newest_first() -> None:
    found = find_installations()
    # Several builds of one major are all kept (16.2 and 16.14), each release once.
    releases = [i.release_key for i in found]
    assert releases == sorted(set(releases), reverse=True)
    assert len({i.release for i in found}) == len(found)
    assert len({i.bindir.resolve() for i in found}) == len(found)
    for inst in found:
        assert inst.postgres.is_file()
        assert inst.initdb.is_file()
        assert inst.has_plugin("pgoutput")
        assert not inst.has_plugin("no_such_plugin")
        assert f"{inst.version}" in inst.version_string


@pytest.mark.skipif(not DEBIAN_15.exists(), reason="Debian's PostgreSQL 15 is not installed")
def test_finds_debian_15() -> None:
    assert 15 in [i.version for i in find_installations()]


@pytest.mark.skipif(importlib.util.find_spec("pgserver") is None, reason="pgserver not installed")
def test_finds_pgserver_16() -> None:
    sixteen = [i for i in find_installations() if i.version == 16]
    assert sixteen, "pgserver brings PostgreSQL 16"


@pytest.mark.skipif(
    not DEBIAN_15_WAL2JSON.exists(), reason="postgresql-15-wal2json is not installed"
)
def test_debian_15_has_wal2json() -> None:
    (fifteen,) = [i for i in find_installations() if i.version == 15]
    assert fifteen.pkglibdir == DEBIAN_15_WAL2JSON.parent
    assert fifteen.has_plugin("wal2json")
    assert LocalCluster(version=15).has_plugin("wal2json")


def test_find_installations_refresh_gives_equal_result() -> None:
    assert find_installations(refresh=True) == find_installations()


# -- arguments, without a server ---------------------------------------------


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ClusterError, match="no PostgreSQL 999 installation"):
        LocalCluster(version=999)


def test_bad_bindir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no usable PostgreSQL"):
        LocalCluster(bindir=tmp_path)


def test_bindir_and_other_version_are_refused(installation: Installation) -> None:
    with pytest.raises(ConfigurationError, match="not the requested"):
        LocalCluster(bindir=installation.bindir, version=installation.version + 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"auth": "ident"},
        {"auth": "scram-sha-256"},
        {"settings": {"bad name": 1}},
        {"settings": {"x = 1\nfsync": "on"}},
        {"extra_files": {"../escape": "x"}},
        {"extra_files": {"/etc/passwd": "x"}},
    ],
)
def test_bad_arguments_are_refused(installation: Installation, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        LocalCluster(bindir=installation.bindir, **kwargs)  # type: ignore[arg-type]


def test_dsn_quotes_awkward_passwords(installation: Installation) -> None:
    password = "a b'c\\d"
    c = LocalCluster(
        bindir=installation.bindir, port=54999, auth="scram-sha-256", password=password
    )
    parsed = psycopg2.extensions.parse_dsn(c.dsn_for("my db"))
    assert parsed == {
        "host": "127.0.0.1",
        "port": "54999",
        "user": "postgres",
        "dbname": "my db",
        "password": password,
    }
    assert "password" not in psycopg2.extensions.parse_dsn(c.dsn_for(password=None))
    assert c.params_for(sslmode="disable")["sslmode"] == "disable"


def test_port_is_unknown_before_start(installation: Installation) -> None:
    c = LocalCluster(bindir=installation.bindir)
    assert not c.running
    with pytest.raises(ClusterError, match="start"):
        _ = c.port
    c.stop()  # stopping a cluster that never started is harmless


def test_cluster_error_is_a_replicant_error() -> None:
    assert issubclass(ClusterError, ReplicantError)
    assert issubclass(ClusterError, RuntimeError)


# -- the shared cluster ------------------------------------------------------


def test_version_matches_installation(cluster: LocalCluster, installation: Installation) -> None:
    (row,) = cluster.execute("SELECT version()")
    assert row[0].startswith(f"PostgreSQL {installation.version}.")
    assert cluster.version == installation.version
    assert cluster.server_version_num // 10000 == installation.version


def test_logical_replication_settings(cluster: LocalCluster) -> None:
    def show(name: str) -> str:
        value: str = cluster.execute(f"SHOW {name}")[0][0]
        return value

    assert show("wal_level") == "logical"
    assert show("max_replication_slots") == "20"
    assert show("max_wal_senders") == "20"
    assert show("fsync") == "off"
    assert show("synchronous_commit") == "on"
    assert show("full_page_writes") == "off"
    assert show("max_prepared_transactions") == "10"
    assert show("logical_decoding_work_mem") == "64kB"
    assert show("listen_addresses") == "127.0.0.1"


def test_connects_over_tcp_and_unix_socket(cluster: LocalCluster) -> None:
    with psycopg2.connect(cluster.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT host(inet_server_addr()), current_user")
        assert cur.fetchone() == ("127.0.0.1", "postgres")
    conn.close()
    assert cluster.connection_params["port"] == str(cluster.port)
    with (
        psycopg2.connect(cluster.dsn_for(host=str(cluster.socket_dir))) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT inet_server_addr()")
        assert cur.fetchone() == (None,)
    conn.close()


def test_replication_connection_is_allowed(cluster: LocalCluster) -> None:
    conn = psycopg2.connect(
        cluster.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection
    )
    try:
        with conn.cursor() as cur:
            cur.execute("IDENTIFY_SYSTEM")
            row = cur.fetchone()
            assert row is not None and row[3] == "postgres"
    finally:
        conn.close()


def test_server_runs_unprivileged(cluster: LocalCluster) -> None:
    pid = cluster.pid
    assert pid is not None
    owner = os.stat(f"/proc/{pid}").st_uid
    assert owner != 0
    assert pwd.getpwuid(owner).pw_name == cluster.os_user
    if os.geteuid() == 0:
        assert cluster.os_user in ("postgres", "nobody")
        # Every directory above the binaries is open to the server's user.
        for directory in [cluster.bindir, *cluster.bindir.parents]:
            assert directory.stat().st_mode & stat.S_IXOTH, directory


def test_create_and_drop_database(cluster: LocalCluster) -> None:
    name = 'Odd "name" db'
    dsn = cluster.create_database(name)
    try:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == (name,)
        conn.close()
        cluster.execute("CREATE TABLE t (x int)", dbname=name)
        cluster.execute("INSERT INTO t VALUES (%s), (%s)", (1, 2), dbname=name)
        assert cluster.execute("SELECT sum(x) FROM t", dbname=name) == [(3,)]
        assert cluster.execute("CREATE TABLE u (x int)", dbname=name) == []
    finally:
        cluster.drop_database(name)
    assert cluster.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)) == []


# -- the db fixture ----------------------------------------------------------


def test_db_fixture_gives_an_empty_database(db: Database) -> None:
    assert db.query("SELECT current_database()") == [(db.dbname,)]
    assert db.query("SELECT count(*) FROM pg_class WHERE relname = 't'") == [(0,)]
    db.execute("CREATE TABLE t (x int, y text)")
    db.execute("INSERT INTO t VALUES (%s, %s)", 1, "50%")
    db.execute("INSERT INTO t VALUES (2, '100%')")
    assert db.query("SELECT x, y FROM t ORDER BY x") == [(1, "50%"), (2, "100%")]
    assert psycopg2.extensions.parse_dsn(db.dsn)["dbname"] == db.dbname


def test_logical_decoding_with_pgoutput(db: Database) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION p FOR TABLE t")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    db.execute("INSERT INTO t VALUES (1)")
    rows = db.query(
        "SELECT substr(data, 1, 1) FROM pg_logical_slot_peek_binary_changes("
        "'s', NULL, NULL, 'proto_version', '1', 'publication_names', 'p')"
    )
    assert [bytes(r[0]) for r in rows] == [b"B", b"R", b"I", b"C"]


@pytest.mark.requires_plugin("wal2json")
def test_logical_decoding_with_wal2json(wal2json_db: Database) -> None:
    db = wal2json_db
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute("SELECT pg_create_logical_replication_slot('w', 'wal2json')")
    db.execute("INSERT INTO t VALUES (7)")
    rows = db.query("SELECT data FROM pg_logical_slot_get_changes('w', NULL, NULL)")
    (change,) = json.loads(rows[0][0])["change"]
    assert change["table"] == "t"
    assert change["columnvalues"] == [7]


def _replication_cursor(
    conn: psycopg2.extensions.connection,
) -> psycopg2.extras.ReplicationCursor:
    cur = conn.cursor()
    assert isinstance(cur, psycopg2.extras.ReplicationCursor)
    return cur


def test_db_drop_removes_active_slots_and_prepared_transactions(db: Database) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION p FOR TABLE t")
    db.execute("SELECT pg_create_logical_replication_slot('idle', 'pgoutput')")

    # A slot held by a streaming walsender that nobody reads from.
    streaming = db.connect(connection_factory=psycopg2.extras.LogicalReplicationConnection)
    stream_cur = _replication_cursor(streaming)
    stream_cur.create_replication_slot("busy", output_plugin="pgoutput")
    stream_cur.start_replication(
        slot_name="busy", options={"proto_version": "1", "publication_names": "p"}
    )
    # A slot whose connection has just closed (still active for a moment).
    closing = db.connect(connection_factory=psycopg2.extras.LogicalReplicationConnection)
    closing_cur = _replication_cursor(closing)
    closing_cur.create_replication_slot("closing", output_plugin="pgoutput")
    closing_cur.start_replication(
        slot_name="closing", options={"proto_version": "1", "publication_names": "p"}
    )
    closing.close()

    prepared = db.connect()
    with prepared.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("PREPARE TRANSACTION 'pending'")
    prepared.close()

    try:
        db.drop()
    finally:
        streaming.close()
    c = db.cluster
    slots = c.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (db.dbname,)
    )
    assert slots == []
    assert c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.dbname,)) == []
    assert c.execute("SELECT gid FROM pg_prepared_xacts") == []
    db.drop()  # a second call (the fixture's teardown) does nothing


# -- private clusters --------------------------------------------------------


def test_settings_override_defaults(make_cluster: MakeCluster) -> None:
    c = make_cluster(
        settings={
            "wal_sender_timeout": "2s",
            "logical_decoding_work_mem": "1MB",
            "application_name": "it's \\ odd",
            "log_connections": True,
        }
    )
    assert c.execute("SHOW wal_sender_timeout") == [("2s",)]
    assert c.execute("SHOW logical_decoding_work_mem") == [("1MB",)]
    assert c.execute("SHOW log_connections") == [("on",)]
    assert c.execute("SELECT current_setting('application_name')") == [("it's \\ odd",)]
    assert c.execute("SHOW wal_level") == [("logical",)]


def test_restart_keeps_port_and_data(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    port, directory = c.port, c.directory
    c.execute("CREATE TABLE kept (x int)")
    c.execute("INSERT INTO kept VALUES (42)")
    modes: list[ShutdownMode] = ["fast", "immediate"]
    for mode in modes:
        old_pid = c.pid
        c.restart(mode)
        assert c.running
        assert c.pid != old_pid
        assert (c.port, c.directory) == (port, directory)
        assert c.execute("SELECT x FROM kept") == [(42,)]


def test_stop_keep_data_then_start_again(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    port = c.port
    c.execute("CREATE TABLE kept (x int)")
    c.stop(keep_data=True)
    assert not c.running
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(c.dsn, connect_timeout=2)
    c.start()
    assert c.port == port
    assert c.execute("SELECT count(*) FROM kept") == [(0,)]


def test_stop_removes_directory_and_processes(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    conn = psycopg2.connect(c.dsn)  # so that a backend exists too
    postmaster = c.pid
    assert postmaster is not None
    children = _children(postmaster)
    assert children, "a running postmaster has background processes"
    directory = c.directory
    try:
        c.stop()
    finally:
        conn.close()
    assert not directory.exists()
    assert not c.running
    assert _gone(postmaster)
    assert all(_gone(pid) for pid in children)
    c.stop()  # again: nothing to do


def test_context_manager_starts_and_cleans_up(installation: Installation) -> None:
    with LocalCluster(bindir=installation.bindir) as c:
        assert c.running
        assert c.execute("SELECT 1") == [(1,)]
        directory, pid = c.directory, c.pid
        assert pid is not None
        assert "running" in repr(c)
    assert not directory.exists()
    assert _gone(pid)


def test_moves_to_another_port_when_the_chosen_one_is_taken(
    installation: Installation, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = iter([busy_port])
    real_pick = cluster_module._pick_port
    monkeypatch.setattr(cluster_module, "_pick_port", lambda: next(picks, None) or real_pick())
    with LocalCluster(bindir=installation.bindir) as c:
        assert c.port != busy_port
        assert c.execute("SELECT 1") == [(1,)]
        assert "Address already in use" in c.log_path.read_text()


def test_fixed_port_taken_fails_with_log_and_leaves_nothing(
    installation: Installation, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: str, **kwargs: str) -> str:
        path = real_mkdtemp(*args, **kwargs)
        made.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    c = LocalCluster(bindir=installation.bindir, port=busy_port)
    with pytest.raises(ClusterError, match="Address already in use") as info:
        c.start()
    assert f"port {busy_port} is in use" in str(info.value)
    assert not c.running
    ours = [p for p in made if Path(p).name.startswith("replicant-pg-")]
    assert ours
    assert not any(Path(p).exists() for p in ours)


def test_password_authentication(
    make_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    c = make_cluster(auth="scram-sha-256", password="s3cret pass'word")
    assert c.execute("SELECT current_user") == [("postgres",)]
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(c.dsn_for(password=None))
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(c.dsn_for(password="wrong"))
    assert c.execute(
        "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres'"
    ) == [(True,)]


def test_extra_files_and_hba_lines(make_cluster: MakeCluster) -> None:
    c = make_cluster(
        hba_lines=["host all nobody_here 127.0.0.1/32 reject"],
        extra_files={"conf.d/extra.conf": "work_mem = '3MB'\n"},
        settings={"include_dir": "conf.d"},
    )
    assert c.execute("SHOW work_mem") == [("3MB",)]
    extra = c.datadir / "conf.d" / "extra.conf"
    assert stat.S_IMODE(extra.stat().st_mode) == 0o600
    rules = c.execute(
        "SELECT type, user_name, auth_method FROM pg_hba_file_rules ORDER BY line_number"
    )
    assert rules[0] == ("host", ["nobody_here"], "reject")


def test_orphans_of_a_dead_process_are_reaped(installation: Installation) -> None:
    script = (
        "import os, sys\n"
        "from replicant.cluster import LocalCluster\n"
        "c = LocalCluster(bindir=sys.argv[1]).start()\n"
        "print(c.directory, c.pid, flush=True)\n"
        "os._exit(0)\n"  # no atexit, no finaliser: as if the process crashed
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(installation.bindir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    directory, pid = Path(out[0]), int(out[1])
    try:
        assert directory.exists()
        assert not _gone(pid)
        cluster_module._reap_orphans()
        assert not directory.exists()
        assert _gone(pid)
    finally:
        if not _gone(pid):
            os.killpg(pid, 9)


def test_start_failure_reports_the_log(installation: Installation) -> None:
    c = LocalCluster(bindir=installation.bindir, settings={"shared_buffers": "plenty"})
    with pytest.raises(ClusterError, match="exited with status") as info:
        c.start()
    assert "shared_buffers" in str(info.value)
    assert not c.running
    with pytest.raises(ClusterError):
        _ = c.directory
