"""Security: passwords, TLS, and names chosen to inject SQL or replication commands.

- A cluster with ``scram-sha-256``: the right password streams (given in a
  key/value DSN, a URI or a keyword argument); a wrong or missing one fails
  at once with a clear :class:`ServerError`, not a retry loop. The password
  appears in no log line, no exception text or repr, no ``repr`` of the
  consumer, even across reconnects.
- A cluster with TLS only (a CA and a server certificate made here with the
  ``openssl`` command): every ``sslmode`` that should connect does, over TLS;
  ``verify-full`` against the wrong host name, or with an untrusted CA, fails
  with a clear error; a TLS connection that is reset is re-established.
- Publication names with quotes, commas, backslashes, semicolons and
  non-ASCII letters work, and one built to add a publication to the list
  adds nothing. Slot names the server would not allow are refused before
  anything is sent.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.sql
import pytest

import replicant
from replicant import ConfigurationError, ConnectionLost, ServerError
from replicant.changes import Insert
from replicant.cluster import ClusterError, LocalCluster, find_installations
from replicant.connection import ReplicationConnection, mask_dsn
from replicant.runtime import Consumer

from .conftest import ClusterFactory, Database, selected_installations
from .fakeserver import FakeServer, Session
from .faultproxy import FaultProxy
from .helpers import Recorder, replicant_threads, running, wait_until

# A password with the characters that break naive quoting, around a token
# that must never show up anywhere.
TOKEN = "tok" + secrets.token_hex(8)
PASSWORD = f"{TOKEN} it's a \\ pässword"


# --- helpers -----------------------------------------------------------------------------------


def exception_texts(error: BaseException) -> list[str]:
    """str() and repr() of an exception and of everything chained to it."""
    texts = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return texts


def log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = [caplog.text]
    for record in caplog.records:
        texts += [formatter.format(record), record.getMessage(), repr(record.args)]
    return texts


def assert_secret_absent(texts: list[str], *secrets_: str) -> None:
    for text in texts:
        for secret in secrets_:
            assert secret not in text, f"a secret leaked: {text!r}"


@pytest.fixture
def seclog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="replicant")
    return caplog


def prepare(cluster: LocalCluster, dbname: str = "postgres") -> None:
    cluster.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text)", dbname=dbname)
    cluster.execute("DROP PUBLICATION IF EXISTS p", dbname=dbname)
    cluster.execute("CREATE PUBLICATION p FOR TABLE t", dbname=dbname)


def stream_one(
    dsn: str | None,
    cluster: LocalCluster,
    slot: str,
    *,
    check: Callable[[], None] | None = None,
    **params: Any,
) -> Consumer:
    """Start a consumer, insert a row, wait for it, run ``check`` while streaming, stop."""
    recorder = Recorder()
    consumer = Consumer(
        dsn, slot=slot, publication="p", callback=recorder, status_interval=0.3, **params
    )
    with running(consumer, timeout=10):
        wait_streaming(cluster, slot)
        key = int(time.monotonic_ns() % 1_000_000_000)
        cluster.execute("INSERT INTO t VALUES (%s, 'secure')", (key,))
        assert wait_until(lambda: len(recorder.commits()) >= 1, 15), "the row never arrived"
        assert [e.new["id"] for e in recorder.events if isinstance(e, Insert)] == [key]
        if check is not None:
            check()
    cluster.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return consumer


def wait_streaming(cluster: LocalCluster, slot: str, timeout: float = 15) -> None:
    """Wait until ``slot`` exists and a walsender streams from it."""
    assert wait_until(
        lambda: (
            cluster.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            == [(True,)]
        ),
        timeout,
    ), f"slot {slot} never became active"


def expect_refusal(dsn: str | None, **params: Any) -> tuple[ServerError, float]:
    """Run a consumer that must be refused: the error, and how long it took."""
    consumer = Consumer(dsn, slot="refused", publication="p", callback=Recorder(), **params)
    started = time.monotonic()
    consumer.start()
    with pytest.raises(ServerError) as info:
        consumer.join(timeout=30)
    elapsed = time.monotonic() - started
    assert not isinstance(info.value, ConnectionLost)
    assert consumer.stats.reconnects == 0, "a refusal must not be retried"
    assert elapsed < 10
    return info.value, elapsed


# --- scram-sha-256 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scram(make_module_cluster: ClusterFactory) -> LocalCluster:
    cluster = make_module_cluster(auth="scram-sha-256", password=PASSWORD)
    prepare(cluster)
    return cluster


def test_scram_password_in_dsn_uri_and_keyword(
    scram: LocalCluster, seclog: pytest.LogCaptureFixture
) -> None:
    assert scram.execute("SHOW password_encryption") == [("scram-sha-256",)]
    params = scram.params_for()
    uri = (
        f"postgresql://{params['user']}:{urllib.parse.quote(PASSWORD, safe='')}"
        f"@{params['host']}:{params['port']}/postgres"
    )
    forms: list[tuple[str | None, dict[str, Any]]] = [
        (scram.dsn, {}),
        (uri, {}),
        (scram.dsn_for(password=None), {"password": PASSWORD}),
        (None, dict(params)),
    ]
    for number, (dsn, extra) in enumerate(forms):
        consumer = stream_one(dsn, scram, f"scram_{number}", **extra)
        text = repr(consumer)
        assert "***" in text, text
        assert_secret_absent([text, str(consumer)], TOKEN, PASSWORD)
    assert_secret_absent(log_texts(seclog), TOKEN, PASSWORD)
    assert not replicant_threads()


@pytest.mark.parametrize("wrong", ["wrong password", None])
def test_wrong_or_missing_password_fails_clearly(
    scram: LocalCluster, seclog: pytest.LogCaptureFixture, wrong: str | None
) -> None:
    with FaultProxy(scram.host, scram.port) as proxy:
        dsn = scram.dsn_for(port=proxy.port, password=wrong)
        error, _ = expect_refusal(dsn, passfile="/nonexistent")
        assert proxy.connections == 1, "one attempt, no retries"
    message = str(error)
    assert error.sqlstate == "28P01", message
    assert "password" in message and ("failed" in message or "no password" in message), message
    texts = exception_texts(error) + log_texts(seclog)
    assert_secret_absent(texts, TOKEN, PASSWORD)
    if wrong is not None:
        assert_secret_absent(texts, wrong)


def test_password_never_logged_across_reconnects(
    scram: LocalCluster, seclog: pytest.LogCaptureFixture
) -> None:
    with FaultProxy(scram.host, scram.port) as proxy:
        recorder = Recorder()
        consumer = Consumer(
            scram.dsn_for(port=proxy.port),
            slot="scram_reconnect",
            publication="p",
            callback=recorder,
            status_interval=0.3,
            backoff_initial=0.05,
        )
        with running(consumer, timeout=10):
            for _ in range(3):
                # Streaming through a live connection: the slot stays active a
                # moment after the last one was cut, so ask the proxy too.
                wait_streaming(scram, "scram_reconnect")
                assert wait_until(lambda: proxy.active >= 1, 10)
                before = consumer.stats.reconnects
                assert proxy.cut() >= 1
                assert wait_until(lambda b=before: consumer.stats.reconnects > b, 10)
            wait_streaming(scram, "scram_reconnect")
            scram.execute("INSERT INTO t VALUES (-1, 'after reconnects')")
            assert wait_until(lambda: len(recorder.commits()) >= 1, 15)
            assert_secret_absent([repr(consumer)], TOKEN, PASSWORD)
    scram.execute("SELECT pg_drop_replication_slot('scram_reconnect')")
    scram.execute("DELETE FROM t WHERE id = -1")
    warnings = [r for r in seclog.records if r.levelno == logging.WARNING]
    assert len(warnings) >= 3
    assert_secret_absent(log_texts(seclog), TOKEN, PASSWORD)


def test_mask_dsn_hides_every_secret() -> None:
    for dsn, params in [
        (psycopg2.extensions.make_dsn(host="h", password=PASSWORD), {}),
        (f"postgresql://u:{urllib.parse.quote(PASSWORD, safe='')}@h/db", {}),
        ("host=h", {"password": PASSWORD}),
        ("host=h sslpassword=" + TOKEN, {}),
    ]:
        masked = mask_dsn(dsn, **params)
        assert "***" in masked
        assert_secret_absent([masked], TOKEN, PASSWORD)
        consumer = Consumer(dsn, slot="s", publication="p", callback=Recorder(), **params)
        assert_secret_absent([repr(consumer), str(consumer)], TOKEN, PASSWORD)


# --- TLS ---------------------------------------------------------------------------------------


@dataclass
class Tls:
    cluster: LocalCluster
    ca: Path
    untrusted_ca: Path

    def params(self, **overrides: str | None) -> dict[str, str]:
        """Connection keywords: host name ``localhost`` at address 127.0.0.1."""
        params = self.cluster.params_for(
            host="localhost", hostaddr="127.0.0.1", sslrootcert=str(self.ca)
        )
        for key, value in overrides.items():
            if value is None:
                params.pop(key, None)
            else:
                params[key] = value
        return params


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for DNS:localhost signed by it, and an unrelated CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name, subject in (("ca", "/CN=replicant test CA"), ("other", "/CN=untrusted CA")):
        openssl(
            "req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "2", "-subj", subject,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory,
        )  # fmt: skip
    openssl(
        "req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls(
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    make_module_cluster: ClusterFactory,
) -> Tls:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("tls")
    make_certificates(directory)
    wanted = {i.bindir for i in selected_installations(request.config)}
    failures = []
    for installation in find_installations():
        if installation.bindir not in wanted:
            continue
        try:
            cluster = make_module_cluster(
                bindir=installation.bindir,
                settings={"ssl": True, "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"},
                extra_files={
                    "server.crt": (directory / "server.crt").read_bytes(),
                    "server.key": (directory / "server.key").read_bytes(),
                },
                # TLS or nothing over TCP.
                hba_lines=[
                    "hostnossl all all 127.0.0.1/32 reject",
                    "hostnossl replication all 127.0.0.1/32 reject",
                ],
            )
        except ClusterError as error:
            # Some builds (the pgserver wheel) come without TLS support.
            failures.append(f"PostgreSQL {installation.version}: {str(error)[-300:]}")
            continue
        prepare(cluster)
        return Tls(cluster, directory / "ca.crt", directory / "other.crt")
    pytest.skip(f"no PostgreSQL with TLS support: {failures}")


def walsender_uses_tls(cluster: LocalCluster) -> bool:
    rows = cluster.execute("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r USING (pid)")
    return rows == [(True,)]


@pytest.mark.parametrize("sslmode", ["allow", "prefer", "require", "verify-ca", "verify-full"])
def test_tls_sslmodes_connect_over_tls(tls: Tls, sslmode: str) -> None:
    cluster = tls.cluster

    def check() -> None:
        assert walsender_uses_tls(cluster), "the replication connection is not encrypted"

    stream_one(
        None,
        cluster,
        f"tls_{sslmode.replace('-', '_')}",
        check=check,
        **tls.params(sslmode=sslmode),
    )


def test_tls_sslmode_disable_is_refused(tls: Tls, seclog: pytest.LogCaptureFixture) -> None:
    error, _ = expect_refusal(None, **tls.params(sslmode="disable"))
    assert "no encryption" in str(error) or "pg_hba.conf" in str(error), str(error)


def test_tls_wrong_host_name_fails_clearly(tls: Tls, seclog: pytest.LogCaptureFixture) -> None:
    error, _ = expect_refusal(None, **tls.params(sslmode="verify-full", host="wrong.example"))
    message = str(error)
    assert "wrong.example" in message and "localhost" in message, message
    assert "does not match" in message, message
    # verify-ca does not check the name: the same connection works.
    stream_one(
        None, tls.cluster, "tls_verify_ca_name",
        **tls.params(sslmode="verify-ca", host="wrong.example"),
    )  # fmt: skip


def test_tls_untrusted_ca_fails_clearly(tls: Tls, seclog: pytest.LogCaptureFixture) -> None:
    for sslmode in ("verify-ca", "verify-full"):
        error, _ = expect_refusal(
            None, **tls.params(sslmode=sslmode, sslrootcert=str(tls.untrusted_ca))
        )
        assert "certificate verify failed" in str(error), str(error)


def test_tls_connection_reset_is_reestablished(tls: Tls, seclog: pytest.LogCaptureFixture) -> None:
    cluster = tls.cluster
    with FaultProxy(cluster.host, cluster.port) as proxy:
        recorder = Recorder()
        params = tls.params(sslmode="verify-full", port=str(proxy.port))
        consumer = Consumer(
            slot="tls_reset",
            publication="p",
            callback=recorder,
            status_interval=0.3,
            backoff_initial=0.05,
            **params,
        )
        with running(consumer, timeout=10):
            wait_streaming(cluster, "tls_reset")
            cluster.execute("INSERT INTO t VALUES (-2, 'before')")
            assert wait_until(lambda: len(recorder.commits()) == 1, 15)
            proxy.cut()
            assert wait_until(lambda: consumer.stats.reconnects == 1, 15)
            wait_streaming(cluster, "tls_reset")
            cluster.execute("INSERT INTO t VALUES (-3, 'after')")
            assert wait_until(lambda: len(recorder.commits()) == 2, 15)
            assert walsender_uses_tls(cluster)
    cluster.execute("SELECT pg_drop_replication_slot('tls_reset')")
    ids = [e.new["id"] for e in recorder.events if isinstance(e, Insert)]
    assert ids == [-2, -3]


# --- names ------------------------------------------------------------------------------------

# Publication names that break naive quoting; each must reach the server as it is.
AWKWARD_PUBLICATIONS = [
    'pub "quoted"',
    "pub,comma",
    "pub\\backslash",
    "pub;semicolon",
    "pub'apostrophe",
    "публикация ü",
    "p'); DROP TABLE victim; --",
    'p" LOGICAL 0/0 ("x',
    "Mixed Case",
]


def test_awkward_publication_names_work(db: Database) -> None:
    db.execute("CREATE TABLE victim (id int PRIMARY KEY)")
    tables = []
    for number, name in enumerate(AWKWARD_PUBLICATIONS):
        table = f"t{number}"
        tables.append(table)
        db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        db.execute(
            psycopg2.sql.SQL("CREATE PUBLICATION {} FOR TABLE {}")
            .format(psycopg2.sql.Identifier(name), psycopg2.sql.Identifier(table))
            .as_string(db._cursor_conn())
        )
    # An injection attempt: a list "pub_inj","other" would add publication "other".
    db.execute("CREATE TABLE t_other (id int PRIMARY KEY)")
    db.execute("CREATE TABLE t_inj (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION other FOR TABLE t_other")
    db.execute('CREATE PUBLICATION "inj"",""other" FOR TABLE t_inj')
    db.execute('CREATE PUBLICATION "inj,other" FOR TABLE t_inj')
    names = [*AWKWARD_PUBLICATIONS, 'inj","other', "inj,other"]
    recorder = Recorder()
    consumer = Consumer(
        db.dsn, slot="awkward", publication=names, callback=recorder, status_interval=0.3
    )
    with running(consumer, timeout=10):
        assert wait_until(
            lambda: bool(db.query("SELECT 1 FROM pg_replication_slots WHERE active")), 15
        )
        for table in [*tables, "t_other", "t_inj"]:
            db.execute(f"INSERT INTO {table} VALUES (1)")
        assert wait_until(lambda: len(recorder.commits()) >= len(tables) + 1, 20), recorder.events
        time.sleep(0.5)  # t_other's commit would arrive by now, if subscribed
    seen = {e.relation.table for e in recorder.events if isinstance(e, Insert)}
    assert seen == {*tables, "t_inj"}, seen
    assert db.query("SELECT count(*) FROM victim") == [(0,)]


BAD_SLOT_NAMES = [
    "",
    "Upper",
    "with space",
    'quote"d',
    "apos'trophe",
    "semi;colon",
    "comma,name",
    "back\\slash",
    "ünïcode",
    'x" LOGICAL "pgoutput',
    "s; DROP_REPLICATION_SLOT other",
    "nul\0byte",
    "a" * 64,
]


@pytest.mark.parametrize("name", BAD_SLOT_NAMES, ids=range(len(BAD_SLOT_NAMES)))
def test_bad_slot_names_refused_before_anything_is_sent(name: str) -> None:
    with FakeServer([Session()]) as server:
        with pytest.raises(ConfigurationError, match="slot name"):
            Consumer(server.dsn, slot=name, publication="p", callback=Recorder())
        with pytest.raises(ConfigurationError, match="slot name"):
            replicant.run(server.dsn, slot=name, publication="p", callback=Recorder())
        assert server.connections == 0, "nothing may be sent for a bad slot name"
        with ReplicationConnection.connect(server.dsn) as connection:
            before = list(server.queries)
            for attempt in (
                lambda: connection.create_slot(name),
                lambda: connection.drop_slot(name),
                lambda: connection.read_slot(name),
                lambda: connection.start(name, None, {"proto_version": "1"}),
            ):
                with pytest.raises(ConfigurationError, match="slot name"):
                    attempt()
            assert server.queries == before, "a command went out with a bad slot name"
            connection.identify_system()  # the connection is still fine
