"""Helpers of the Redis integration tests: a test database on the server of TICKETBLITZ_REDIS_URL.

Not a conftest.py on purpose (see test_postgres_store.py): pytest would import it under the module name
`conftest`, shadowing tests/conftest.py for the suites that import from it. The test modules import
these helpers and define their fixtures themselves.

Each module owns one database number and empties it (FLUSHDB) freely, so it never touches the data of
the application or of other suites, which use other databases of the same server.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import redis

URL_ENV = "TICKETBLITZ_REDIS_URL"
LOCKS_DB = 3  # tests/integration/test_redis_locks.py
ADMISSION_DB = 4  # tests/integration/test_redis_admission.py
TELEMETRY_DB = 5  # tests/integration/test_telemetry_relay.py (pub/sub channel tb:telemetry:5)


def redis_test_url(db: int) -> str:
    """TICKETBLITZ_REDIS_URL's server with database `db`, emptied. Fails (never skips) the test when the
    variable is unset or the server does not answer."""
    url = os.environ.get(URL_ENV)
    if not url:
        pytest.fail(f'{URL_ENV} is not set: run `eval "$(bash scripts/services.sh env)"` first', pytrace=False)
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    configured = query.get("db") or parts.path.strip("/") or "0"
    if configured == str(db):
        pytest.fail(f"{URL_ENV} points at database {db}, which the Redis tests empty: use another one", pytrace=False)
    if parts.scheme == "unix":
        query["db"] = str(db)
        test_url = urlunsplit(parts._replace(query=urlencode(query)))
    else:
        query.pop("db", None)
        test_url = urlunsplit(parts._replace(path=f"/{db}", query=urlencode(query)))
    try:
        flushdb(test_url)
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {parts.hostname}:{parts.port} is unreachable ({exc}); "
                    "start it with `bash scripts/services.sh up`", pytrace=False)
    return test_url


def flushdb(url: str) -> None:
    """Empty the database of `url` (a real Redis loss, as far as the adapters can tell)."""
    with redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client:
        client.flushdb()


def client(url: str) -> redis.Redis:
    """A plain client for the tests' own reads (decoded strings)."""
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5, decode_responses=True)
