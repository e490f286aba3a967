"""The door's settings: environment variables, defaults, validation, and what Hypercorn gets from them."""

from __future__ import annotations

import pytest

from ticketblitz.config import Settings
from ticketblitz.server import hypercorn_config


def test_defaults_and_environment() -> None:
    s = Settings.from_env({})
    assert (s.max_connections, s.header_timeout, s.body_timeout, s.idle_timeout) == (10_000, 10.0, 10.0, 15.0)
    assert (s.max_head_bytes, s.max_headers, s.max_target_bytes) == (16_384, 100, 8192)
    s = Settings.from_env({"TICKETBLITZ_MAX_CONNECTIONS": "50", "TICKETBLITZ_HEADER_TIMEOUT": "2.5",
                           "TICKETBLITZ_MAX_HEADERS": "20", "TICKETBLITZ_MAX_TARGET_BYTES": "1024"})
    assert (s.max_connections, s.header_timeout, s.max_headers, s.max_target_bytes) == (50, 2.5, 20, 1024)


@pytest.mark.parametrize(("name", "value"), [
    ("MAX_CONNECTIONS", "0"), ("HEADER_TIMEOUT", "0"), ("BODY_TIMEOUT", "-1"), ("IDLE_TIMEOUT", "inf"),
    ("MAX_HEAD_BYTES", "100"), ("MAX_HEAD_BYTES", "2000000"), ("MAX_HEADERS", "0"), ("MAX_TARGET_BYTES", "10"),
    ("MAX_TARGET_BYTES", "16384"),
])
def test_validation(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name.lower()):
        Settings.from_env({f"TICKETBLITZ_{name}": value})


def test_hypercorn_gets_deadlines_longer_than_the_doors() -> None:
    s = Settings()
    config = hypercorn_config(s)
    assert config.read_timeout is not None and config.read_timeout > s.max_wait  # a long-poll sends nothing
    assert config.keep_alive_timeout > s.idle_timeout  # behind the door, the door closes idle ones first
    assert config.websocket_ping_interval is not None and config.websocket_ping_interval < config.read_timeout
    assert hypercorn_config(s.replace(intake_door=False)).keep_alive_timeout == s.idle_timeout
