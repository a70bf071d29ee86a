"""Operations: safe defaults, exit codes and hints, lag and health, metrics, progress.

The command runs as a subprocess (``python -m replicant``) against real
servers; the library's figures are checked against what the server itself
reports (``pg_replication_slots``, ``pg_current_wal_lsn()``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replicant import LSN, ConnectionLost, Consumer, ServerError, SlotError
from replicant.cluster import Installation, LocalCluster

from .conftest import Database
from .helpers import ROOT, Recorder, cli_env, running, wait_for
from .helpers import run_cli as replicant

DEAD = "host=127.0.0.1 port=1 connect_timeout=2"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("replicant"), lines[0]
    return lines[0]


def current_lsn(db: Database) -> LSN:
    return LSN(db.query("SELECT pg_current_wal_lsn()::text")[0][0])


def slot_row(db: Database, slot: str) -> dict[str, Any] | None:
    rows = db.query(
        "SELECT active, temporary, confirmed_flush_lsn::text, wal_status, safe_wal_size"
        " FROM pg_replication_slots WHERE slot_name = %s",
        slot,
    )
    if not rows:
        return None
    active, temporary, confirmed, wal_status, safe = rows[0]
    return {
        "active": active,
        "temporary": temporary,
        "confirmed": LSN(confirmed) if confirmed else None,
        "wal_status": wal_status,
        "safe_wal_size": safe,
    }


@pytest.fixture
def shop(db: Database) -> Database:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    db.execute("CREATE PUBLICATION shop FOR TABLE items")
    return db


# --- a temporary run never consumes a permanent slot


def test_temporary_refuses_an_existing_permanent_slot(shop: Database) -> None:
    assert replicant("slot", "create", shop.dsn, "--slot", "perm").returncode == 0
    before = slot_row(shop, "perm")
    assert before is not None
    shop.execute("INSERT INTO items VALUES (1, 'a')")
    end = str(current_lsn(shop))
    result = replicant(
        "stream", shop.dsn, "--slot", "perm", "--publication", "shop", "--temporary",
        "--end", end,
    )  # fmt: skip
    assert result.returncode == 1
    assert "permanent" in one_line_error(result)
    assert result.stdout == ""
    consumer = Consumer(
        shop.dsn, slot="perm", publication="shop", callback=Recorder(), temporary=True
    )
    with pytest.raises(SlotError, match="is permanent"):
        consumer.run()
    after = slot_row(shop, "perm")
    assert after is not None and after["confirmed"] == before["confirmed"]
    # A temporary run of a name of its own is fine, and leaves nothing behind.
    ok = replicant(
        "stream", shop.dsn, "--slot", "tmp", "--publication", "shop", "--temporary",
        "--end", str(current_lsn(shop)),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert slot_row(shop, "tmp") is None


# --- authorization failures are final


@pytest.fixture(scope="module")
def guarded(installation: Installation) -> Iterator[LocalCluster]:
    """A private server that rejects one role in pg_hba.conf and wants a password of another."""
    cluster = LocalCluster(
        bindir=installation.bindir,
        hba_lines=[
            "host all rejected 127.0.0.1/32 reject",
            "host replication rejected 127.0.0.1/32 reject",
            "host all pwuser 127.0.0.1/32 scram-sha-256",
            "host replication pwuser 127.0.0.1/32 scram-sha-256",
        ],
    )
    cluster.start()
    try:
        cluster.execute("SET password_encryption = 'scram-sha-256'")
        cluster.execute("CREATE ROLE norepl LOGIN")
        cluster.execute("CREATE ROLE rejected LOGIN REPLICATION")
        cluster.execute(
            "SET password_encryption = 'scram-sha-256'; "
            "CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'right'"
        )
        yield cluster
    finally:
        cluster.stop("immediate")


AUTH_CASES = {
    "no REPLICATION attribute": ({"user": "norepl"}, r"replication role|REPLICATION attribute"),
    "pg_hba.conf reject": ({"user": "rejected"}, r"pg_hba\.conf"),
    "bad password": ({"user": "pwuser", "password": "wrong"}, r"password authentication failed"),
}


@pytest.mark.parametrize("case", list(AUTH_CASES))
def test_authorization_failures_end_at_once(guarded: LocalCluster, case: str) -> None:
    overrides, words = AUTH_CASES[case]
    dsn = guarded.dsn_for("postgres", **overrides)
    # Even with every retry switch on, a refused login is final.
    consumer = Consumer(
        dsn, slot="auth", publication="p", callback=Recorder(), retry_first_connect=True,
        backoff_initial=0.05, backoff_max=0.1,
    )  # fmt: skip
    started = time.monotonic()
    consumer.start()
    with pytest.raises(ServerError, match=words):
        consumer.join(30)
    assert consumer.stats.reconnects == 0
    assert time.monotonic() - started < 15
    result = replicant(
        "stream", dsn, "--slot", "auth", "--publication", "p", "--retry-first-connect",
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert re.search(words, one_line_error(result))


# --- the first connection's failure is final by default


def test_first_connection_failure_is_final_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    consumer = Consumer(DEAD, slot="s", publication="p", callback=Recorder())
    consumer.start()
    with pytest.raises(ConnectionLost, match="could not connect"):
        consumer.join(30)
    assert consumer.stats.reconnects == 0 and consumer.stats.streams == 0

    caplog.set_level(logging.WARNING, logger="replicant")
    retrying = Consumer(
        DEAD, slot="s", publication="p", callback=Recorder(), retry_first_connect=True,
        backoff_initial=0.05, backoff_max=0.1,
    )  # fmt: skip
    with running(retrying):
        wait_for(lambda: retrying.stats.reconnects >= 2, what="retries")
        assert retrying.running
    warnings = [r.getMessage() for r in caplog.records if "reconnecting" in r.getMessage()]
    assert warnings
    for message in warnings:  # libpq's several lines, joined into one
        assert "\n" not in message and "\t" not in message, message
    assert retrying.health().errors["ConnectionLost"] >= 2


def test_cli_first_connection_failure(background: Any) -> None:
    started = time.monotonic()
    result = replicant("stream", DEAD, "--slot", "s", "--publication", "p")
    assert result.returncode == 1
    line = one_line_error(result)
    assert "could not connect" in line and "--retry-first-connect" in line
    assert time.monotonic() - started < 20
    # With the switch it keeps trying, one line per attempt, until stopped.
    stream = background(
        "stream", DEAD, "--slot", "s", "--publication", "p", "--retry-first-connect",
    )  # fmt: skip
    wait_for(lambda: sum("reconnecting" in line for line in stream.stderr) >= 2, what="two retries")
    stream.proc.send_signal(signal.SIGINT)
    assert stream.wait() == 130
    assert all(line.startswith("replicant") for line in stream.stderr), stream.stderr
    assert "acknowledged up to 0/0" not in "".join(stream.stderr)
    assert "never streamed" in stream.stderr[-1]


# --- exit codes


def test_bad_slot_name_is_a_usage_error_everywhere() -> None:
    for command in (
        ["stream", "dbname=x", "--publication", "p"],
        ["slot", "create", "dbname=x"],
        ["slot", "info", "dbname=x"],
    ):
        result = replicant(*command, "--slot", "Bad-Name")
        assert result.returncode == 2, (command, result.stderr)
        assert "slot name" in one_line_error(result), command


def closed_pipe_run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command with its standard output a pipe whose reader has gone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "replicant", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head` does once it has its lines
    stderr = proc.stderr.read()
    code = proc.wait(60)
    return subprocess.CompletedProcess(args, code, "", stderr)


def test_closed_pipe_exits_0_quietly(shop: Database) -> None:
    assert replicant("slot", "create", shop.dsn, "--slot", "piped").returncode == 0
    shop.execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 50) g")
    end = str(current_lsn(shop))
    for command in (
        ["check", shop.dsn],
        ["slot", "list", shop.dsn],
        ["stream", shop.dsn, "--slot", "piped", "--publication", "shop", "--end", end],
    ):
        result = closed_pipe_run(*command)
        assert result.returncode == 0, (command, result.stderr)
        assert result.stderr == "", (command, result.stderr)


# --- hints


def test_hints_name_the_fix(shop: Database) -> None:
    missing = replicant("stream", shop.dsn, "--slot", "nosuch", "--publication", "shop")
    assert missing.returncode == 1
    line = one_line_error(missing)
    assert f"port {shop.cluster.port} database {shop.dbname}" in line
    assert f"replicant slot create '{shop.dsn}' --slot nosuch" in line
    assert "--create-slot" in line

    # A pgoutput slot streamed as wal2json (checked before any plugin is loaded).
    shop.execute("SELECT pg_create_logical_replication_slot('other', 'pgoutput')")
    wrong = replicant("stream", shop.dsn, "--slot", "other", "--plugin", "wal2json")
    assert wrong.returncode == 1
    assert "add --plugin pgoutput" in one_line_error(wrong)

    assert replicant("slot", "create", shop.dsn, "--slot", "busy").returncode == 0
    again = replicant("slot", "create", shop.dsn, "--slot", "busy")
    assert again.returncode == 1 and "--if-not-exists" in one_line_error(again)
    consumer = Consumer(shop.dsn, slot="busy", publication="shop", callback=Recorder())
    with running(consumer):
        wait_for(lambda: consumer.health().streaming, what="the stream")
        wait_for(lambda: (slot_row(shop, "busy") or {}).get("active"), what="an active slot")
        active = replicant("slot", "drop", shop.dsn, "--slot", "busy")
        assert active.returncode == 1
        line = one_line_error(active)
        assert "is active" in line and "--wait" in line


# --- the documented behaviour


def test_every_command_has_version() -> None:
    for command in (["stream"], ["slot", "drop"], ["check"]):
        result = replicant(*command, "--version")
        assert result.returncode == 0, (command, result.stderr)
        assert re.match(r"replicant \d+\.\d+", result.stdout), command


def test_summary_counts_written_events_and_speaks_english(shop: Database) -> None:
    assert replicant("slot", "create", shop.dsn, "--slot", "words").returncode == 0
    shop.execute("INSERT INTO items VALUES (1, 'one')")
    shop.execute("SELECT pg_logical_emit_message(true, 'note', 'héllo')")
    shop.execute("SELECT pg_logical_emit_message(false, 'blob', '\\xff00'::bytea)")
    shop.execute("INSERT INTO items VALUES (2, 'two')")  # the end lies beyond the message
    end = str(current_lsn(shop))
    result = replicant(
        "stream", shop.dsn, "--slot", "words", "--publication", "shop", "-o", "messages",
        "--end", end, "-v",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [line["kind"] for line in lines]
    assert "relation" not in kinds
    messages = [line for line in lines if line["kind"] == "message"]
    assert [m.get("text") for m in messages] == ["héllo", None], result.stdout  # no UTF-8
    assert all("content" in m for m in messages)
    done = result.stderr.strip().splitlines()[-1]
    transactions = kinds.count("commit")
    assert f"{len(lines)} events written from" in done, done
    assert re.search(rf"from {transactions} transactions?,", done), done
    assert "1 transactions" not in result.stderr


def test_api_reference_lists_are_not_cut() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## `replicant`", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    bullets = [i for i, line in enumerate(lines) if line.startswith("- `")]
    assert bullets
    between = lines[bullets[0] : bullets[-1] + 1]
    assert all(line.startswith("- `") for line in between), "a heading cuts the list"


# --- lag and health, checked against the server


def slot_lag(db: Database, slot: str) -> tuple[LSN, LSN, int]:
    """The server's current WAL position, the slot's confirmed position and their distance."""
    current, confirmed, lag = db.query(
        "SELECT pg_current_wal_lsn()::text, confirmed_flush_lsn::text,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
        " FROM pg_replication_slots WHERE slot_name = %s",
        slot,
    )[0]
    return LSN(current), LSN(confirmed), int(lag)


def test_health_figures_match_the_server(shop: Database) -> None:
    from replicant import Commit

    gate = threading.Event()
    commits: list[Commit] = []

    def callback(event: Any) -> LSN | None:
        if not isinstance(event, Commit):
            return None  # acknowledged by whole transactions
        commits.append(event)
        if len(commits) == 2:
            gate.wait(60)  # hold the stream here: a backlog builds up behind it
        return LSN(event.lsn)

    consumer = Consumer(
        shop.dsn, slot="lag", publication="shop", callback=callback, status_interval=0.2,
        health_interval=0.2,
    )  # fmt: skip
    assert consumer.health().server_lsn is None and not consumer.health().running
    problems: list[BaseException] = []
    stop_reading = threading.Event()

    def read_all_the_time() -> None:  # health() from another thread, all along
        while not stop_reading.is_set():
            try:
                consumer.health().to_dict()
            except BaseException as error:
                problems.append(error)
                return

    reader = threading.Thread(target=read_all_the_time, daemon=True)
    with running(consumer):
        wait_for(lambda: consumer.health().streaming, what="the stream")
        reader.start()
        for batch in range(8):
            shop.execute(
                "INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(%s, %s) g",
                batch * 2000 + 1,
                batch * 2000 + 2000,
            )
        wait_for(lambda: len(commits) == 2, what="the second commit")
        first = commits[0]
        # The server has been told what the stream acknowledged ...
        wait_for(
            lambda: slot_lag(shop, "lag")[1] == consumer.health().acknowledged_lsn,
            what="the slot to confirm the first commit",
        )
        before = slot_lag(shop, "lag")
        asked = time.monotonic()
        wait_for(
            lambda: (
                (age := consumer.health().slot_read_age) is not None
                and age < time.monotonic() - asked
            ),
            what="a read of the server after now",
        )
        health = consumer.health()
        after = slot_lag(shop, "lag")
        # ... and the lag is the distance to the server's WAL end, as the server sees it.
        assert health.acknowledged_lsn == first.lsn == before[1]
        assert health.server_lsn is not None and before[0] <= health.server_lsn <= after[0]
        assert health.bytes_behind == health.server_lsn - health.acknowledged_lsn
        assert before[2] <= health.bytes_behind <= after[2]
        # Most of the backlog was never received yet: received-minus-acknowledged
        # (what -v used to print) is a fraction of it.
        assert health.bytes_behind > 1_000_000
        assert health.received_lsn - health.acknowledged_lsn < health.bytes_behind / 2
        assert health.wal_status == slot_row(shop, "lag")["wal_status"]  # type: ignore[index]
        assert health.safe_wal_size == slot_row(shop, "lag")["safe_wal_size"]  # type: ignore[index]
        assert health.slot_confirmed_lsn == first.lsn
        assert first.commit_time is not None
        expected = time.time() - first.commit_time.timestamp()
        assert health.seconds_behind is not None
        assert abs(health.seconds_behind - expected) < 1.0, (health.seconds_behind, expected)
        assert health.seconds_behind_received is not None
        assert health.seconds_since_last_message is not None
        assert health.seconds_since_last_message < 30
        gate.set()
        wait_for(lambda: len(commits) == 8, what="the backlog")
        health = consumer.health()
        assert health.transactions == 8 and health.events >= 8 * 2002
        # The rates come from samples the reader takes as it goes: the first
        # one after the backlog may not be in yet.
        wait_for(
            lambda: (
                (now := consumer.health()).events_per_second > 0 and now.transactions_per_second > 0
            ),
            what="the rates to show the backlog",
        )
        wait_for(
            lambda: (
                consumer.health().seconds_behind == 0.0
                and consumer.health().seconds_behind_received == 0.0
            ),
            what="caught up",
        )
        wait_for(lambda: slot_lag(shop, "lag")[1] >= commits[-1].lsn, what="the last commit")
        server_lag = slot_lag(shop, "lag")[2]
        caught_up = consumer.health()
        assert caught_up.bytes_behind is not None and caught_up.bytes_behind < 64 * 1024
        assert server_lag < 64 * 1024
        stop_reading.set()
        reader.join(10)
    assert not problems, problems
    done = consumer.health()
    assert not done.running and not done.streaming and done.streams == 1


def test_cli_verbose_lag_is_the_servers(shop: Database, background: Any) -> None:
    assert replicant("slot", "create", shop.dsn, "--slot", "slow").returncode == 0
    for batch in range(6):
        shop.execute(
            "INSERT INTO items SELECT g, repeat('y', 300) FROM generate_series(%s, %s) g",
            batch * 2000 + 1,
            batch * 2000 + 2000,
        )
    # Nobody reads the output: the stream stalls once the pipe is full, far behind.
    stream = background(
        "stream", shop.dsn, "--slot", "slow", "--publication", "shop", "-s", "0.5", "-v",
        read_stdout=False,
    )  # fmt: skip
    wait_for(
        lambda: sum("behind the server" in line for line in stream.stderr) >= 2,
        timeout=30,
        what="two progress lines",
    )
    # The server's lag around the next line: other WAL on the shared server only
    # makes it grow while the stream stalls.
    seen = sum("behind the server" in line for line in stream.stderr)
    _, _, before = slot_lag(shop, "slow")
    wait_for(
        lambda: sum("behind the server" in line for line in stream.stderr) > seen,
        timeout=30,
        what="the next progress line",
    )
    _, _, after = slot_lag(shop, "slow")
    line = [line for line in stream.stderr if "behind the server" in line][-1]
    match = re.search(r"acknowledged ([0-9A-F]+/[0-9A-F]+), ([\d.]+) (B|kB|MB)", line)
    assert match, line
    shown = float(match.group(2)) * {"B": 1, "kB": 1024, "MB": 1024 * 1024}[match.group(3)]
    assert before > 2_000_000
    assert 0.9 * before <= shown <= 1.1 * after, (line, before, after)


def test_slot_list_shows_lag_in_bytes_and_the_state(shop: Database) -> None:
    assert replicant("slot", "create", shop.dsn, "--slot", "listed").returncode == 0
    shop.execute("INSERT INTO items SELECT g, repeat('z', 100) FROM generate_series(1, 500) g")
    _, _, lag = slot_lag(shop, "listed")
    table = replicant("slot", "list", shop.dsn)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert "LAG_BYTES" in header and "STATE" in header
    ours = next(row for row in rows if row.startswith("listed "))
    cells = ours.split()
    shown = int(cells[cells.index("inactive") - 1])
    assert lag <= shown <= lag + 64 * 1024, (ours, lag)
    assert re.search(r"\d+ kB", ours), ours
    listed = json.loads(replicant("slot", "list", shop.dsn, "--json").stdout)
    entry = next(item for item in listed if item["slot"] == "listed")
    assert entry["state"] == "inactive" and entry["lag"].endswith("kB")
    assert lag <= entry["lag_bytes"] <= lag + 64 * 1024
    consumer = Consumer(shop.dsn, slot="listed", publication="shop", callback=Recorder())
    with running(consumer):
        wait_for(lambda: (slot_row(shop, "listed") or {}).get("active"), what="active")
        listed = json.loads(replicant("slot", "list", shop.dsn, "--json").stdout)
        assert next(i for i in listed if i["slot"] == "listed")["state"] == "active"


# --- metrics


def scrape(url: str) -> dict[str, float]:
    """The endpoint's samples: ``name{labels}`` to value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_endpoint_during_a_stream(shop: Database, background: Any) -> None:
    pytest.importorskip("prometheus_client")
    assert replicant("slot", "create", shop.dsn, "--slot", "scraped").returncode == 0
    for batch in range(4):
        shop.execute(
            "INSERT INTO items SELECT g, repeat('m', 300) FROM generate_series(%s, %s) g",
            batch * 2000 + 1,
            batch * 2000 + 2000,
        )
    # Output nobody reads: the stream stalls behind the server, and stays there.
    stream = background(
        "stream", shop.dsn, "--slot", "scraped", "--publication", "shop", "-s", "0.5",
        "--metrics", "127.0.0.1:0", read_stdout=False,
    )  # fmt: skip
    wait_for(lambda: any("metrics at" in line for line in stream.stderr), what="the endpoint")
    url = next(line for line in stream.stderr if "metrics at" in line).split()[-1]
    slot = 'slot="scraped"'

    def lag_known() -> bool:
        return f"replicant_lag_bytes{{{slot}}}" in scrape(url)

    wait_for(lag_known, what="the lag")
    # The stream has begun (it stalls only once the pipe is full).
    events = f"replicant_events_total{{{slot}}}"
    wait_for(lambda: scrape(url).get(events, 0) > 0, what="the first events")
    acknowledged = f"replicant_acknowledged_lsn{{{slot}}}"
    wait_for(
        lambda: slot_lag(shop, "scraped")[1] == scrape(url)[acknowledged],
        what="the server to confirm what was acknowledged",
    )
    samples = scrape(url)
    current, confirmed, lag = slot_lag(shop, "scraped")
    assert samples[f"replicant_acknowledged_lsn{{{slot}}}"] == confirmed
    assert samples[f"replicant_server_lsn{{{slot}}}"] <= current
    assert abs(samples[f"replicant_lag_bytes{{{slot}}}"] - lag) < 0.1 * lag
    assert lag > 1_000_000
    assert samples[f"replicant_events_total{{{slot}}}"] > 0
    assert samples[f"replicant_received_lsn{{{slot}}}"] >= confirmed
    assert samples[f"replicant_streaming{{{slot}}}"] == 1
    assert samples[f'replicant_slot_wal_status{{{slot},status="reserved"}}'] == 1
    assert samples[f'replicant_slot_wal_status{{{slot},status="lost"}}'] == 0
    assert f'replicant_lag_seconds{{position="acknowledged",{slot}}}' in samples
    assert f"replicant_reconnects_total{{{slot}}}" in samples
    stream.proc.send_signal(signal.SIGTERM)
    stream.proc.stdout.close()  # let a blocked write fail, so the stop is prompt
    assert stream.wait() in (0, 143)


def test_collector_in_a_registry_of_ones_own(shop: Database) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from replicant.metrics import ConsumerCollector

    registry = prometheus_client.CollectorRegistry()
    consumer = Consumer(shop.dsn, slot="own", publication="shop", callback=Recorder())
    registry.register(ConsumerCollector(consumer, labels={"service": "billing"}))
    labels = {"slot": "own", "service": "billing"}
    assert registry.get_sample_value("replicant_events_total", labels) == 0
    assert registry.get_sample_value("replicant_lag_bytes", labels) is None  # not known yet
    with running(consumer):
        wait_for(lambda: registry.get_sample_value("replicant_streaming", labels) == 1)
        shop.execute("INSERT INTO items VALUES (1, 'a')")
        wait_for(
            lambda: registry.get_sample_value("replicant_transactions_total", labels) == 1,
            what="the transaction counted",
        )
        assert registry.get_sample_value("replicant_running", labels) == 1
        assert registry.get_sample_value("replicant_errors_total", {**labels, "kind": "x"}) is None
    text = prometheus_client.generate_latest(registry).decode()
    events = consumer.stats.events
    assert events >= 3  # Begin, Insert, Commit (and a Relation)
    assert f'replicant_events_total{{service="billing",slot="own"}} {float(events)}' in text


# --- progress through a backlog


def make_health(**fields: Any) -> Any:
    from replicant import Health

    base: dict[str, Any] = dict(
        slot="s", running=True, streaming=True, streams=1, received_lsn=LSN(0),
        acknowledged_lsn=LSN(0), server_lsn=None, bytes_behind=None, seconds_behind=None,
        seconds_behind_received=None, events=0, transactions=0, bytes=0, reconnects=0,
        errors={}, events_per_second=0.0, transactions_per_second=0.0, rate_window=10.0,
        seconds_since_last_message=None, slot_read_age=0.1,
    )  # fmt: skip
    base.update(fields)
    return Health(**base)


class FakeOut:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_backlog_progress_on_a_terminal_and_in_a_log() -> None:
    from replicant.progress import BacklogProgress

    start, total = 0x1000000, 100 * 1024 * 1024
    for tty in (True, False):
        now = [0.0]
        out = FakeOut()
        progress = BacklogProgress(
            out, tty=tty, interval=10.0, refresh=0.5, clock=lambda now=now: now[0]
        )
        progress.update(make_health(streaming=False))  # not streaming yet: nothing
        progress.update(make_health(acknowledged_lsn=LSN(start), server_lsn=None))
        assert out.text == "" and not progress.active
        for step in range(41):  # 1 MB a tick of 0.5 s: 2 MB/s
            now[0] = step * 0.5
            done = min(total, step * 1024 * 1024 * 3)
            progress.update(
                make_health(
                    acknowledged_lsn=LSN(start + done // 2),
                    received_lsn=LSN(start + done),
                    server_lsn=LSN(start + total + step),  # the server moves on: not the target
                    events=step * 1000,
                )
            )
            if progress.finished:
                break
        assert progress.finished and progress.total == total
        if tty:
            assert out.text.count("\r\x1b[K") >= 30 and out.text.count("\n") == 1
            assert "MB/s" in out.text and "s left" in out.text
        else:
            lines = out.text.splitlines()
            assert "\r" not in out.text and 2 <= len(lines) <= 4, lines  # every 10 s, and the end
            assert lines[0].startswith("backlog   0.0%")
        assert (
            out.text.rstrip("\n")
            .splitlines()[-1]
            .split("\x1b[K")[-1]
            .startswith("backlog done: 100 MB")
        )
    # A small backlog is not reported at all.
    out = FakeOut()
    small = BacklogProgress(out, tty=True)
    small.update(make_health(acknowledged_lsn=LSN(start), server_lsn=LSN(start + 1000)))
    assert small.finished and out.text == ""


def test_backlog_measured_at_the_start_is_reported_however_late() -> None:
    from replicant.progress import BacklogProgress

    start, total = LSN(0x5000000), 8 * 1024 * 1024
    backlog = dict(backlog_start_lsn=start, backlog_end_lsn=LSN(int(start) + total))
    # The first look comes after the stream ended, the backlog long drained:
    # it is measured from where the stream started, not from where it is now.
    out = FakeOut()
    late = BacklogProgress(out, tty=False, clock=lambda: 3.0)
    done = LSN(int(start) + total + 500)
    late.update(make_health(streaming=False, acknowledged_lsn=done, received_lsn=done, **backlog))
    assert late.finished and late.total == total
    assert out.text.startswith("backlog done: 8.0 MB") and out.text.count("\n") == 1, out.text
    # Half done at the first look: a line from the start's backlog, not the rest's.
    out = FakeOut()
    half = BacklogProgress(out, tty=False, clock=lambda: 1.0)
    middle = LSN(int(start) + total // 2)
    half.update(make_health(acknowledged_lsn=middle, received_lsn=middle, **backlog))
    assert not half.finished and out.text.startswith("backlog  50.0%  4.0 MB of 8.0 MB"), out.text


def run_with_stderr_on_a_terminal(*args: str) -> tuple[int, str]:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "replicant", *args],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=cli_env(),
        cwd=ROOT,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(60), b"".join(chunks).decode()


def test_cli_backlog_progress(shop: Database) -> None:
    for slot in ("tty", "log", "quiet"):
        shop.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", slot)
    # About 8 MB of WAL: beyond the 1 MB worth a progress line. The backlog is
    # measured as the stream starts, so a command that drains it all before
    # its first progress check still reports it done.
    for batch in range(8):
        shop.execute(
            "INSERT INTO items SELECT g, repeat('p', 300) FROM generate_series(%s, %s) g",
            batch * 2500 + 1,
            batch * 2500 + 2500,
        )
    end = str(current_lsn(shop))
    common = ["--publication", "shop", "--end", end]
    code, terminal = run_with_stderr_on_a_terminal("stream", shop.dsn, "--slot", "tty", *common)
    assert code == 0, terminal
    assert "\r\x1b[Kreplicant: backlog " in terminal and "backlog done:" in terminal
    log = replicant("stream", shop.dsn, "--slot", "log", *common)
    assert log.returncode == 0, log.stderr
    lines = log.stderr.splitlines()
    assert lines and all(line.startswith("replicant: backlog") for line in lines), lines
    assert "\r" not in log.stderr and lines[-1].startswith("replicant: backlog done:")
    quiet = replicant("stream", shop.dsn, "--slot", "quiet", *common, "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


# --- pg_recvlogical's conventions


def slot_flags(db: Database, slot: str) -> tuple[bool, bool | None] | None:
    """The slot's two_phase and (17+) failover flags."""
    failover = "failover" if db.cluster.server_version_num >= 170000 else "NULL"
    rows = db.query(
        f"SELECT two_phase, {failover} FROM pg_replication_slots WHERE slot_name = %s", slot
    )
    return (bool(rows[0][0]), rows[0][1]) if rows else None


def test_pg_recvlogical_short_options(shop: Database, tmp_path: Path) -> None:
    out = tmp_path / "changes.jsonl"
    shop.execute("SELECT pg_create_logical_replication_slot('short', 'pgoutput')")
    shop.execute("INSERT INTO items VALUES (1, 'one')")
    shop.execute("SELECT pg_logical_emit_message(true, 'p', 'm')")
    end = str(current_lsn(shop))
    port = str(shop.cluster.port)
    # -d a database name with -h -p -U around it, as libpq clients build the connection.
    result = replicant(
        "stream", "-d", shop.dbname, "-h", shop.cluster.host, "-p", port, "-U",
        shop.cluster.user, "-S", "short", "-P", "pgoutput", "--publication", "shop",
        "-o", "messages", "-E", end, "-f", str(out), "-F", "0", "-s", "1", "-n", "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    kinds = [json.loads(line)["kind"] for line in out.read_text().splitlines()]
    assert kinds == ["begin", "insert", "commit", "begin", "message", "commit"]
    assert slot_row(shop, "short")["confirmed"] == LSN(end)  # type: ignore[index]
    # -d a whole connection string, whose port -p overrides; --endpos the long name.
    wrong_port = shop.dsn_with(port=1)
    again = replicant(
        "stream", "-d", wrong_port, "-p", port, "-S", "short", "--publication", "shop",
        "--endpos", end, "--no-loop", "-q",
    )  # fmt: skip
    assert again.returncode == 0 and again.stdout == "", again.stderr
    both = replicant("stream", shop.dsn, "-d", shop.dbname, "-S", "x", "--publication", "shop")
    assert both.returncode == 2 and "not both" in one_line_error(both)
    version = replicant("stream", "-V")
    assert version.returncode == 0 and version.stdout.startswith("replicant ")
    assert replicant("stream", "-?").returncode == 0
    dead = replicant("stream", "-h", "127.0.0.1", "-p", "1", "-S", "s", "--publication", "p")
    assert dead.returncode == 1 and '"127.0.0.1", port 1' in one_line_error(dead)


def test_create_and_drop_slot_around_a_stream(shop: Database) -> None:
    shop.execute("INSERT INTO items VALUES (1, 'before the slot')")
    end = str(current_lsn(shop))
    made = replicant(
        "stream", shop.dsn, "-S", "around", "--publication", "shop", "--create-slot",
        "--drop-slot", "-E", end,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "dropped slot around" in made.stderr
    assert slot_row(shop, "around") is None
    # --if-not-exists: an existing slot is used as it is; --drop-slot keeps it after a failure.
    shop.execute("SELECT pg_create_logical_replication_slot('kept', 'pgoutput')")
    exists = replicant(
        "stream", shop.dsn, "-S", "kept", "--publication", "shop", "--create-slot",
        "--if-not-exists", "-E", str(current_lsn(shop)),
    )  # fmt: skip
    assert exists.returncode == 0, exists.stderr
    failed = replicant(
        "stream", shop.dsn, "-S", "kept", "--publication", "nosuch", "--drop-slot",
        "-E", str(current_lsn(shop)),
    )  # fmt: skip
    assert failed.returncode == 1 and slot_row(shop, "kept") is not None


def test_two_phase_and_failover_slots(shop: Database) -> None:
    version = shop.cluster.server_version_num
    end = str(current_lsn(shop))
    needs = replicant("stream", shop.dsn, "-S", "tp", "--publication", "shop", "--two-phase")
    assert needs.returncode == 2 and "--create-slot" in one_line_error(needs)
    two_phase = replicant(
        "stream", shop.dsn, "-S", "tp", "--publication", "shop", "--create-slot",
        "--two-phase", "-E", end,
    )  # fmt: skip
    if version < 150000:
        assert two_phase.returncode == 2 and "15" in one_line_error(two_phase)
    else:
        assert two_phase.returncode == 0, two_phase.stderr
        assert (slot_flags(shop, "tp") or (False, None))[0] is True
        shop.execute("BEGIN; INSERT INTO items VALUES (7, 'prepared'); PREPARE TRANSACTION 'g1'")
        prepared_end = str(current_lsn(shop))
        prepared = replicant(
            "stream", shop.dsn, "-S", "tp", "--publication", "shop", "--two-phase",
            "--create-slot", "-E", prepared_end,
        )  # fmt: skip
        shop.execute("ROLLBACK PREPARED 'g1'")
        assert prepared.returncode == 0, prepared.stderr
        kinds = [json.loads(line)["kind"] for line in prepared.stdout.splitlines()]
        assert "prepare" in kinds, kinds
    failover = replicant(
        "stream", shop.dsn, "-S", "fo", "--publication", "shop", "--create-slot",
        "--failover", "-E", end,
    )  # fmt: skip
    if version < 170000:
        assert failover.returncode == 1 and "PostgreSQL 17" in one_line_error(failover)
        assert slot_row(shop, "fo") is None
    else:
        assert failover.returncode == 0, failover.stderr
        assert (slot_flags(shop, "fo") or (None, None))[1] is True
    temporary = replicant(
        "stream", shop.dsn, "-S", "fo", "--publication", "shop", "--temporary", "--failover"
    )
    assert temporary.returncode == 2


def test_password_prompt(guarded: LocalCluster) -> None:
    guarded.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")
    guarded.execute(
        "DO $$ BEGIN CREATE PUBLICATION tpub FOR TABLE t; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    end = guarded.execute("SELECT pg_current_wal_lsn()::text")[0][0]
    args = [
        sys.executable, "-m", "replicant", "stream", "-h", guarded.host, "-p",
        str(guarded.port), "-U", "pwuser", "-d", "postgres", "-W", "-S", "pw",
        "--publication", "tpub", "--temporary", "-E", end,
    ]  # fmt: skip
    for password, code in (("right", 0), ("wrong", 1)):
        result = subprocess.run(
            args, input=password + "\n", capture_output=True, text=True, env=cli_env(),
            cwd=ROOT, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == code, result.stderr
        assert password not in result.stderr
    no_input = subprocess.run(
        args, input="", capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=60,
        check=False,
    )  # fmt: skip
    assert no_input.returncode == 2 and "-W" in no_input.stderr
