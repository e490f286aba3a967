"""Unit tests of the one configuration object (`ticketblitz.config.Settings`): environment variables,
explicit overrides, validation messages, masked description, admin token generation."""

from __future__ import annotations

import pytest

from ticketblitz.config import Settings


def test_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.workers, s.demo, s.admin_token) == ("127.0.0.1", 8000, 1, False, "")
    assert s.max_body_bytes == 65536
    assert s.embedded
    assert s.db_path.name == "ticketblitz.db"


def test_reads_ticketblitz_variables_with_types() -> None:
    env = {
        "TICKETBLITZ_HOST": "0.0.0.0",
        "TICKETBLITZ_PORT": "9001",
        "TICKETBLITZ_DEMO": "true",
        "TICKETBLITZ_STORE_TIMEOUT": "2.5",
        "TICKETBLITZ_LOCK_TTL_MS": "1500",
        "TICKETBLITZ_ADMIN_TOKEN": "s3cret-token",
        "TICKETBLITZ_DATA_DIR": "/tmp/tb-data",
        "TICKETBLITZ_LOG_LEVEL": "debug",
    }
    s = Settings.from_env(env)
    assert s.host == "0.0.0.0"
    assert s.port == 9001 and isinstance(s.port, int)
    assert s.demo is True
    assert s.store_timeout == 2.5 and isinstance(s.store_timeout, float)
    assert s.lock_ttl_ms == 1500
    assert s.admin_token == "s3cret-token"
    assert str(s.db_path) == "/tmp/tb-data/ticketblitz.db"
    assert s.log_level == "debug"


def test_ignores_other_variables() -> None:
    s = Settings.from_env({"PORT": "1234", "TICKETBLITZ_NOPE": "x", "ticketblitz_port": "4321"})
    assert s.port == 8000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" On ", True),
     ("0", False), ("false", False), ("no", False), ("off", False), ("", False)],
)
def test_bool_conversion(raw: str, expected: bool) -> None:
    assert Settings.from_env({"TICKETBLITZ_DEMO": raw}).demo is expected


def test_produce_timeout_defaults_to_two_seconds_and_reads_its_variable() -> None:
    assert Settings.from_env({}).produce_timeout == 2.0
    assert Settings.from_env({"TICKETBLITZ_PRODUCE_TIMEOUT": "0.5"}).produce_timeout == 0.5


def test_float_setting_accepts_an_integer_string() -> None:
    s = Settings.from_env({"TICKETBLITZ_SWEEP_INTERVAL": "3"})
    assert s.sweep_interval == 3.0


def test_explicit_overrides_win_over_environment() -> None:
    env = {"TICKETBLITZ_PORT": "9001", "TICKETBLITZ_HOST": "0.0.0.0", "TICKETBLITZ_DEMO": "1"}
    s = Settings.from_env(env, port=7000, demo=False)
    assert s.port == 7000
    assert s.demo is False
    assert s.host == "0.0.0.0"


def test_none_overrides_leave_the_environment_value() -> None:
    s = Settings.from_env({"TICKETBLITZ_PORT": "9001"}, port=None, host=None)
    assert s.port == 9001
    assert s.host == "127.0.0.1"


def test_from_env_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETBLITZ_PORT", "9123")
    assert Settings.from_env().port == 9123


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TICKETBLITZ_PORT", "eighty"),
        ("TICKETBLITZ_PORT", "80.5"),
        ("TICKETBLITZ_WORKERS", ""),
        ("TICKETBLITZ_DEMO", "maybe"),
        ("TICKETBLITZ_DEMO", "2"),
        ("TICKETBLITZ_STORE_TIMEOUT", "soon"),
        ("TICKETBLITZ_QUEUE_LIMIT", "1e3"),
        ("TICKETBLITZ_MAX_BODY_BYTES", "64KiB"),
    ],
)
def test_unparsable_values_raise_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable) as info:
        Settings.from_env({variable: value})
    assert repr(value) in str(info.value) or value in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value", "name"),
    [
        ("TICKETBLITZ_PORT", "70000", "port"),
        ("TICKETBLITZ_PORT", "-1", "port"),
        ("TICKETBLITZ_WORKERS", "0", "workers"),
        ("TICKETBLITZ_MAX_BODY_BYTES", "100", "max_body_bytes"),
        ("TICKETBLITZ_STORE_TIMEOUT", "0", "store_timeout"),
        ("TICKETBLITZ_LOCK_TIMEOUT", "-1", "lock_timeout"),
        ("TICKETBLITZ_PRODUCE_TIMEOUT", "0", "produce_timeout"),
        ("TICKETBLITZ_PRODUCE_TIMEOUT", "inf", "produce_timeout"),
        ("TICKETBLITZ_MAX_WAIT", "0", "max_wait"),
        ("TICKETBLITZ_QUEUE_LIMIT", "0", "queue_limit"),
        ("TICKETBLITZ_CONSUMERS", "-1", "consumers"),
        ("TICKETBLITZ_CONSUMER_BATCH", "0", "consumer_batch"),
        ("TICKETBLITZ_LOCK_TTL_MS", "0", "lock_ttl_ms"),
    ],
)
def test_out_of_range_values_raise_naming_the_setting(variable: str, value: str, name: str) -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({variable: value})
    assert name in str(info.value).lower()


@pytest.mark.parametrize("value", ["nan", "NaN"])
def test_nan_timeout_is_refused(value: str) -> None:
    """NaN passes `<= 0` checks; a NaN deadline would only fail later, inside the serving nursery."""
    with pytest.raises(ValueError, match=r"(?i)store_timeout"):
        Settings.from_env({"TICKETBLITZ_STORE_TIMEOUT": value})


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ValueError, match="port"):
        Settings.from_env({}, port=99999)


def test_workers_above_one_in_embedded_mode_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({"TICKETBLITZ_WORKERS": "2"})
    message = str(info.value)
    assert "workers" in message
    assert "distributed" in message
    assert "TICKETBLITZ_DATABASE_URL" in message
    with pytest.raises(ValueError, match="workers"):
        Settings.from_env({}, workers=4)


def test_workers_above_one_in_distributed_mode_is_fine() -> None:
    env = {
        "TICKETBLITZ_WORKERS": "4",
        "TICKETBLITZ_DATABASE_URL": "postgresql://tb:pw@db:5432/tb",
        "TICKETBLITZ_REDIS_URL": "redis://redis:6379/0",
        "TICKETBLITZ_KAFKA_BOOTSTRAP": "kafka:9092",
    }
    s = Settings.from_env(env)
    assert s.workers == 4
    assert not s.embedded


def test_describe_masks_the_admin_token_and_database_password() -> None:
    s = Settings.from_env({
        "TICKETBLITZ_ADMIN_TOKEN": "very-secret-admin-token-value",
        "TICKETBLITZ_DATABASE_URL": "postgresql://ticket:hunter2pass@db.internal:5432/tb",
        "TICKETBLITZ_REDIS_URL": "redis://:redispass99@cache:6379/0",
        "TICKETBLITZ_KAFKA_BOOTSTRAP": "kafka:9092",
    })
    text = s.describe()
    assert "very-secret-admin-token-value" not in text
    assert "secret-admin-token" not in text
    assert "hunter2pass" not in text
    assert "redispass99" not in text
    assert "db.internal:5432/tb" in text  # the host stays readable
    assert "kafka:9092" in text
    lines = dict(line.strip().split(" = ", 1) for line in text.splitlines())
    assert "admin_token" in lines and "database_url" in lines
    assert lines["port"] == "8000"
    assert lines["admin_token"] != ""


def test_describe_masks_a_short_admin_token_entirely() -> None:
    text = Settings.from_env({"TICKETBLITZ_ADMIN_TOKEN": "abc123"}).describe()
    assert "abc123" not in text
    assert "abc" not in text.split("admin_token = ", 1)[1].splitlines()[0]


def test_describe_masks_a_password_given_as_a_url_parameter() -> None:
    """libpq also takes the password as a URI query parameter; it must not be printed either."""
    s = Settings.from_env({}, database_url="postgresql://db.internal/tb?user=ticket&password=hunter2pass",
                          redis_url="redis://cache:6379/0", kafka_bootstrap="kafka:9092")
    assert "hunter2pass" not in s.describe()


def test_describe_does_not_change_the_settings() -> None:
    s = Settings.from_env({"TICKETBLITZ_ADMIN_TOKEN": "very-secret-admin-token-value"})
    s.describe()
    assert s.admin_token == "very-secret-admin-token-value"


def test_ensure_admin_token_generates_once() -> None:
    s = Settings.from_env({})
    assert s.admin_token == ""
    assert s.ensure_admin_token() is True
    token = s.admin_token
    assert len(token) >= 16
    assert s.ensure_admin_token() is False
    assert s.admin_token == token
    other = Settings.from_env({})
    other.ensure_admin_token()
    assert other.admin_token != token


def test_ensure_admin_token_keeps_a_configured_one() -> None:
    s = Settings.from_env({"TICKETBLITZ_ADMIN_TOKEN": "configured-token"})
    assert s.ensure_admin_token() is False
    assert s.admin_token == "configured-token"


def test_replace_returns_a_new_settings() -> None:
    s = Settings.from_env({})
    t = s.replace(port=9999)
    assert (s.port, t.port) == (8000, 9999)
