"""What a store's caller hears when a deadline passes is what happened: a write reported `Unavailable`
never commits afterwards, one that committed is never reported as failed, and no failure (not even
of COMMIT or ROLLBACK) leaves a connection inside a transaction.

SQLite: slow writes under a tiny timeout, COMMIT failures (a deferred constraint, an interrupt), a
failing ROLLBACK, a wait for the writer that outlasts the deadline, a slow COMMIT. PostgreSQL (real,
fresh databases): a caller that gives up while its thread still runs, a thread that only starts after
its caller's deadline, a COMMIT whose request or reply is held by a TCP proxy, a connection cut right
after COMMIT was sent. Outcomes are asserted, never durations.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from test_postgres_store import Databases, databases  # noqa: F401 - the fixture, shared

from ticketblitz.adapters.postgres_store import PostgresStore
from ticketblitz.adapters.sqlite_store import SqliteStore
from ticketblitz.domain.errors import Unavailable


# ---------------------------------------------------------------------- SQLite
@pytest.fixture
async def tiny(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A SQLite store whose calls have 0.3 s each."""
    store = SqliteStore(tmp_path / "tiny.db", timeout=0.3)
    await store.open()
    yield store
    await store.close()


def probes(store: SqliteStore) -> list[str]:
    """The probe rows a test wrote (server_keys is a handy table with nothing else in it)."""
    db = sqlite3.connect(str(store.path))
    try:
        return [r[0] for r in db.execute("SELECT name FROM server_keys WHERE name LIKE 'probe%' ORDER BY name")]
    finally:
        db.close()


def probe(name: str) -> Callable[[sqlite3.Connection], str]:
    def write(db: sqlite3.Connection) -> str:
        db.execute("INSERT INTO server_keys (name, value) VALUES (?, x'00')", (name,))
        return name

    return write


async def still_writes(store: SqliteStore) -> None:
    """The writer is not stuck inside a transaction: the next write goes through."""
    assert store._writer is not None and not store._writer.db.in_transaction
    assert await store._write(probe("probe-after")) == "probe-after"


async def test_sqlite_a_statement_past_the_deadline_is_interrupted_and_rolled_back(tiny: SqliteStore) -> None:
    def endless(db: sqlite3.Connection) -> None:
        probe("probe-slow")(db)
        db.execute("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n").fetchone()

    with pytest.raises(Unavailable):
        await tiny._write(endless)  # the progress handler interrupts it
    await still_writes(tiny)
    assert probes(tiny) == ["probe-after"]


async def test_sqlite_an_overrun_found_before_commit_is_rolled_back(tiny: SqliteStore) -> None:
    def dawdles(db: sqlite3.Connection) -> str:
        probe("probe-late")(db)
        time.sleep(0.5)  # no SQLite steps: the progress handler cannot see this, the check before COMMIT does
        return "late"

    with pytest.raises(Unavailable):
        await tiny._write(dawdles)
    await still_writes(tiny)
    assert probes(tiny) == ["probe-after"]


async def test_sqlite_a_commit_that_fails_leaves_no_transaction_open(tiny: SqliteStore) -> None:
    """A deferred constraint fails at COMMIT, and SQLite keeps the transaction open: it is rolled back
    (before, every later BEGIN IMMEDIATE failed with 'cannot start a transaction within a transaction')."""

    def orphan(db: sqlite3.Connection) -> None:
        db.execute("PRAGMA defer_foreign_keys = ON")
        probe("probe-orphan")(db)
        db.execute("INSERT INTO seats (event_id, position, id, section, row, number) "
                   "VALUES ('evt_none', 1, 'A-1-1', 'A', 1, 1)")

    with pytest.raises(sqlite3.IntegrityError):
        await tiny._write(orphan)
    await still_writes(tiny)
    assert probes(tiny) == ["probe-after"]


class FaultyCommit:
    """Stands in for the writer's sqlite3 connection and fails its COMMIT (and ROLLBACK) on demand."""

    def __init__(self, real: sqlite3.Connection, *, commit: str, rollback_fails: bool = False) -> None:
        self.real = real
        self.commit = commit  # "interrupt": a progress handler fires inside COMMIT; "ioerror": COMMIT raises
        self.rollback_fails = rollback_fails

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def execute(self, statement: str, *args: Any) -> Any:
        if statement == "COMMIT" and self.commit == "interrupt":
            self.real.set_progress_handler(lambda: 1, 1)  # as a deadline passing right then would
            try:
                return self.real.execute(statement, *args)
            finally:
                self.real.set_progress_handler(None, 0)
        if statement == "COMMIT" and self.commit == "ioerror":
            raise sqlite3.OperationalError("disk I/O error")
        if statement == "ROLLBACK" and self.rollback_fails:
            raise sqlite3.OperationalError("disk I/O error")
        return self.real.execute(statement, *args)


async def test_sqlite_an_interrupted_commit_is_rolled_back_and_reported(tiny: SqliteStore) -> None:
    writer = tiny._writer
    assert writer is not None
    real = writer.db
    writer.db = FaultyCommit(real, commit="interrupt")  # type: ignore[assignment]
    with pytest.raises(Unavailable) as info:
        await tiny._write(probe("probe-interrupted"))
    assert "interrupted" in info.value.detail
    assert not real.in_transaction
    writer.db = real
    await still_writes(tiny)
    assert probes(tiny) == ["probe-after"]


async def test_sqlite_when_rollback_fails_too_the_connection_is_replaced(tiny: SqliteStore) -> None:
    writer = tiny._writer
    assert writer is not None
    broken = FaultyCommit(writer.db, commit="ioerror", rollback_fails=True)
    writer.db = broken  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        await tiny._write(probe("probe-lost"))
    assert writer.db is not broken  # closed (which discarded its transaction) and opened afresh
    with pytest.raises(sqlite3.ProgrammingError):
        broken.real.execute("SELECT 1")
    await still_writes(tiny)
    assert probes(tiny) == ["probe-after"]


async def test_sqlite_a_wait_for_the_writer_past_the_deadline_never_commits_later(tiny: SqliteStore) -> None:
    started = threading.Event()

    def hogs(db: sqlite3.Connection) -> None:
        started.set()
        time.sleep(1.0)  # holds the one writer well past the next call's deadline

    outcomes: dict[str, str] = {}

    async def call(name: str, fn: Callable[[sqlite3.Connection], Any]) -> None:
        try:
            await tiny._write(fn)
            outcomes[name] = "ok"
        except Unavailable:
            outcomes[name] = "unavailable"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "hog", hogs)
        await trio.to_thread.run_sync(started.wait)
        nursery.start_soon(call, "waiter", probe("probe-waiter"))
    assert outcomes == {"hog": "unavailable", "waiter": "unavailable"}
    await still_writes(tiny)
    assert probes(tiny) == ["probe-after"]  # the waiter's write never ran


async def test_sqlite_a_commit_that_ran_is_reported_even_when_it_took_long(tiny: SqliteStore) -> None:
    """A non-abandoning thread is waited for: its result, however late, is returned, never TooSlowError."""
    writer = tiny._writer
    assert writer is not None
    real = writer.db

    class SlowCommit(FaultyCommit):
        def execute(self, statement: str, *args: Any) -> Any:
            result = self.real.execute(statement, *args)
            if statement == "COMMIT":
                time.sleep(tiny.timeout + 1.5)  # a slow fsync: past the call's deadline and trio's margin
            return result

    writer.db = SlowCommit(real, commit="slow")  # type: ignore[assignment]
    assert await tiny._write(probe("probe-slow-commit")) == "probe-slow-commit"
    writer.db = real
    assert probes(tiny) == ["probe-slow-commit"]


async def test_sqlite_a_failed_checkpoint_never_fails_the_commit_before_it(tiny: SqliteStore) -> None:
    """SQLite reports an automatic checkpoint's error as the COMMIT's, after the commit: so checkpoints run
    after commits, apart, and their failures are only logged."""
    writer = tiny._writer
    assert writer is not None
    real = writer.db
    assert real.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0

    class FailingCheckpoint(FaultyCommit):
        def execute(self, statement: str, *args: Any) -> Any:
            if statement.startswith("PRAGMA wal_checkpoint"):
                raise sqlite3.OperationalError("disk I/O error")
            return self.real.execute(statement, *args)

    writer.db = FailingCheckpoint(real, commit="")  # type: ignore[assignment]
    writer.checkpoint_every = 1  # the next commit is followed by a checkpoint
    assert await tiny._write(probe("probe-checkpoint")) == "probe-checkpoint"
    writer.db = real
    assert probes(tiny) == ["probe-checkpoint"]


async def test_sqlite_checkpoints_keep_the_wal_short(tiny: SqliteStore) -> None:
    def write(i: int) -> Callable[[sqlite3.Connection], None]:
        return lambda db: db.execute("INSERT INTO server_keys VALUES (?, zeroblob(16000))", (f"probe-{i:03}",))

    for i in range(500):  # about five pages each: some 2,500 WAL pages if nothing checkpointed
        await tiny._write(write(i))
    db = sqlite3.connect(str(tiny.path))
    try:  # frames in the WAL right now: about one checkpoint interval's worth (1000 pages)
        _busy, frames, _done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        db.close()
    assert 0 < frames < 1500


# ---------------------------------------------------------------------- PostgreSQL

def pg_probes(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM server_keys WHERE name LIKE 'probe%' ORDER BY name")]


def pg_probe(name: str, then: Callable[[], None] = lambda: None) -> Callable[[Any], str]:
    def write(conn: Any) -> str:
        conn.execute("INSERT INTO server_keys (name, value) VALUES (%s, '\\x00')", (name,))
        then()
        return name

    return write


async def threads_done(store: PostgresStore) -> None:
    """Wait until every thread the store abandoned has ended (each keeps its limiter token until then)."""
    with trio.fail_after(30):
        while store._limiter.borrowed_tokens:  # noqa: ASYNC110 (threads: nothing to wait on)
            await trio.sleep(0.05)


async def test_pg_a_thread_that_starts_after_its_callers_deadline_commits_nothing(databases: Databases) -> None:
    """One connection, two calls: the second waits for the first past its own deadline. Its deadline runs
    from the call, so it neither commits after its caller heard Unavailable nor runs on borrowed time."""
    url = databases.create()
    store = PostgresStore(url, timeout=1.0, pool_size=1)
    await store.open()
    outcomes: dict[str, str] = {}

    async def call(name: str, fn: Callable[[Any], Any]) -> None:
        try:
            await store._call(fn)
            outcomes[name] = "ok"
        except Unavailable:
            outcomes[name] = "unavailable"

    started = threading.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "first", pg_probe("probe-first", lambda: (started.set(), time.sleep(1.5))))
        await trio.to_thread.run_sync(started.wait)
        nursery.start_soon(call, "second", pg_probe("probe-second", lambda: time.sleep(0.7)))
    await threads_done(store)
    assert outcomes == {"first": "unavailable", "second": "unavailable"}
    assert pg_probes(url) == []
    await store.close()


async def test_pg_a_caller_cancelled_from_outside_before_commit_commits_nothing(databases: Databases) -> None:
    url = databases.create()
    store = PostgresStore(url, timeout=5.0, pool_size=2)
    await store.open()
    with trio.move_on_after(0.3) as scope:  # e.g. the client hung up
        await store._call(pg_probe("probe-cancelled", lambda: time.sleep(1.0)))
    assert scope.cancelled_caught
    await threads_done(store)
    assert pg_probes(url) == []  # the thread found its caller gone and rolled back
    assert await store.server_key(b"k") == b"k"  # and the store works on
    await store.close()


class Proxy:
    """A TCP proxy in front of PostgreSQL. `arm(mode)`, callable from any thread, affects the connections
    open at that moment: "requests" holds what they send, "replies" holds what they receive (until
    `release`), "cut" forwards the next request and then closes the client's side. Later connections
    pass untouched (the store's question about a commit in doubt goes through)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.listen_port = 0
        self.opened = 0  # connections accepted so far
        self.armed_below = 0  # connections numbered below this are affected by `mode`
        self.mode = ""
        self.released = trio.Event()
        self.token: trio.lowlevel.TrioToken | None = None

    def arm(self, mode: str) -> None:
        self.mode, self.armed_below = mode, self.opened

    def release(self) -> None:
        self.released.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.listen_port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        number = self.opened
        self.opened += 1

        def affected(mode: str) -> bool:
            return self.mode == mode and number < self.armed_below

        try:
            server = await trio.open_tcp_stream(self.host, self.port)
        except OSError:
            await client.aclose()
            return

        async def requests(cancel: trio.CancelScope) -> None:
            async for data in client:
                if affected("requests"):
                    await self.released.wait()
                await server.send_all(data)
                if affected("cut"):
                    await client.aclose()  # COMMIT went out; its sender never hears back
                    await trio.sleep_forever()  # the server side stays up until it replies or ends
            cancel.cancel()

        async def replies(cancel: trio.CancelScope) -> None:
            async for data in server:
                if affected("replies"):
                    await self.released.wait()
                try:
                    await client.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
            cancel.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(requests, nursery.cancel_scope)
                nursery.start_soon(replies, nursery.cancel_scope)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
                await server.aclose()


@pytest.fixture
async def proxied(databases: Databases, nursery: trio.Nursery) -> AsyncIterator[tuple[Proxy, str, str]]:
    """(proxy, the database's URL through the proxy, its direct URL)."""
    direct = databases.create()
    params = conninfo_to_dict(direct)
    proxy = Proxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    await nursery.start(proxy.serve)
    yield proxy, make_conninfo(direct, host="127.0.0.1", port=str(proxy.listen_port)), direct
    proxy.release()


async def test_pg_a_commit_whose_reply_is_held_is_reported_committed(proxied: tuple[Proxy, str, str]) -> None:
    """COMMIT reached PostgreSQL, its answer did not reach us in time: the caller is told what happened
    (asked on a fresh connection), not Unavailable."""
    proxy, url, direct = proxied
    store = PostgresStore(url, timeout=0.5, pool_size=2)
    await store.open()
    assert await store._call(pg_probe("probe-held-reply", partial(proxy.arm, "replies"))) == "probe-held-reply"
    assert pg_probes(direct) == ["probe-held-reply"]
    proxy.release()
    await threads_done(store)
    await store.close()


async def test_pg_a_commit_that_never_arrives_is_ended_and_reported_unavailable(
        proxied: tuple[Proxy, str, str]) -> None:
    """The COMMIT is held on its way: the transaction is still open when the caller asks, so its backend is
    terminated first; the answer, rolled back, is final, and a COMMIT released later changes nothing."""
    proxy, url, direct = proxied
    store = PostgresStore(url, timeout=0.5, pool_size=2)
    await store.open()

    def slow_to_end(conn: Any) -> str:
        # The server would end this idle transaction itself after 2 x timeout (the test below); make it
        # outlive the caller's patience, as with production timeouts, so that the caller must end it.
        conn.execute("SET LOCAL idle_in_transaction_session_timeout = '60s'")
        return pg_probe("probe-held-commit", partial(proxy.arm, "requests"))(conn)

    with pytest.raises(Unavailable) as info:
        await store._call(slow_to_end)
    assert "nothing was written" in info.value.detail
    assert pg_probes(direct) == []
    proxy.release()  # the held COMMIT goes to a backend that is gone
    await threads_done(store)
    assert pg_probes(direct) == []
    assert await store.server_key(b"k") == b"k"  # the pool replaced the lost connection
    await store.close()


async def test_pg_a_session_the_server_ends_during_commit_is_unavailable(proxied: tuple[Proxy, str, str]) -> None:
    """The COMMIT is held on its way and PostgreSQL ends the idle session first (its
    idle_in_transaction_session_timeout, an InternalError in psycopg): Unavailable, nothing written."""
    proxy, url, direct = proxied
    store = PostgresStore(url, timeout=0.5, pool_size=2)  # the server ends idle transactions after 1 s
    await store.open()
    with pytest.raises(Unavailable):
        await store._call(pg_probe("probe-ended", partial(proxy.arm, "requests")))
    proxy.release()
    await threads_done(store)
    assert pg_probes(direct) == []
    await store.close()


async def test_pg_a_connection_lost_right_after_commit_was_sent_is_settled(proxied: tuple[Proxy, str, str]) -> None:
    """The connection dies between sending COMMIT and reading its answer: the commit happened, and the
    caller hears its result, not a lost-connection Unavailable."""
    proxy, url, direct = proxied
    store = PostgresStore(url, timeout=2.0, pool_size=2)
    await store.open()
    assert await store._call(pg_probe("probe-cut", partial(proxy.arm, "cut"))) == "probe-cut"
    assert pg_probes(direct) == ["probe-cut"]
    proxy.release()
    await threads_done(store)
    await store.close()
