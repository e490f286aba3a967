"""The one configuration object. Every setting is a typed attribute with a default; values come from
`TICKETBLITZ_*` environment variables, then command-line flags. The server reads nothing else."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "TICKETBLITZ_"
_LOG_LEVELS = {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}
_SECRETS = {"admin_token", "database_url", "redis_url", "secret_key"}


def _default_static_dir() -> str:
    """The visualizer's files: the package `ticketblitz.static`, which is the checkout's top-level `static/`
    (mapped by setup.py, so an editable install finds the checkout's folder and `pip install .` its copy
    in site-packages); a checkout that was never installed falls back to `../static`."""
    spec = importlib.util.find_spec("ticketblitz.static")
    if spec is not None and spec.submodule_search_locations:
        return str(Path(next(iter(spec.submodule_search_locations))).resolve())
    return str(Path(__file__).resolve().parent.parent / "static")


@dataclass(slots=True)
class Settings:
    # --- serving
    host: str = "127.0.0.1"  # address the HTTP listener binds
    port: int = 8000  # port of the one public listener
    data_dir: str = "./data"  # embedded store lives here (ticketblitz.db)
    demo: bool = False  # create the demo event "The Eras Tour" at start if missing
    demo_seats: int = 10_000  # seats of the demo event when it is created: 1..100, or a multiple of 100 (rows of 100)
    static_dir: str = field(default_factory=_default_static_dir)  # the visualizer's files
    admin_token: str = ""  # bearer token of organizer routes; generated and printed once when empty
    secret_key: str = ""  # key deriving booking secrets of Idempotency-Key requests; empty = one kept in the store
    intake_door: bool = True  # answer booking intake on the lean Trio door; false = Hypercorn answers all
    # --- distributed mode (unset = embedded SQLite, in-process queue and locks)
    database_url: str = ""  # postgresql://… selects the PostgreSQL store
    redis_url: str = ""  # redis://… selects Redis locks and edge inventory
    kafka_bootstrap: str = ""  # host:port selects the Kafka queue
    kafka_topic: str = "booking-requests"  # topic of queued booking requests (its DLQ: <topic>-dlq)
    kafka_group: str = "booking-group"  # consumer group shared by every server process
    workers: int = 1  # server processes sharing the port (distributed mode only)
    listen_fd: int = -1  # internal: a listening socket inherited from the `--workers` supervisor
    # --- limits and deadlines
    max_body_bytes: int = 65536  # larger request bodies get 413
    max_connections: int = 10_000  # open connections per process; beyond it a new one gets 503 + Retry-After
    header_timeout: float = 10.0  # seconds from a request's first byte to the end of its head, else 408
    body_timeout: float = 10.0  # seconds from the end of a head to the end of its body, else 408
    idle_timeout: float = 15.0  # seconds a keep-alive connection may wait for its next request, then it closes
    max_head_bytes: int = 16_384  # request line + header fields; larger heads get 431
    max_headers: int = 100  # header fields per request (and trailer fields); more get 431
    max_target_bytes: int = 8192  # request-target (path + query); longer ones get 414
    queue_limit: int = 50_000  # pending bookings beyond which intake answers 429
    store_timeout: float = 5.0  # seconds any one store call may take
    lock_timeout: float = 2.0  # seconds a consumer waits for seat locks
    lock_ttl_ms: int = 10_000  # lease of a seat lock
    intake_batch: int = 512  # booking requests made durable in one store transaction
    consumers: int = 2  # consumer tasks deciding queued bookings; 0 = intake only (work waits for a consumer)
    consumer_batch: int = 256  # bookings decided in one store transaction
    sweep_interval: float = 1.0  # seconds between hold-expiry sweeps
    shutdown_grace: float = 10.0  # seconds to drain queued work on SIGINT/SIGTERM
    max_wait: float = 30.0  # upper bound of `?wait=` long-polls
    cors_origins: str = ""  # comma-separated origins allowed cross-origin requests; empty = no CORS headers
    intake_limit: int = 16_384  # booking requests waiting for intake per process; beyond it 429 at once
    max_long_polls: int = 2_000  # concurrent `?wait=` long-polls per process; beyond it 429
    max_ws_subscribers: int = 500  # /ws subscribers per process; beyond it the handshake gets 503
    ws_subscriber_buffer: int = 64  # messages (one per tick) waiting per /ws subscriber; beyond it dropped, counted
    telemetry_tick: float = 0.1  # seconds between two flushes of telemetry frames to /ws subscribers
    max_frames_per_tick: int = 50  # non-seat telemetry frames per tick; more are dropped (and counted)
    seat_map_max_age: float = 0.5  # seconds a cached seat map may serve changes made by other processes
    produce_timeout: float = 2.0  # seconds a Kafka produce may take before intake answers 503
    log_level: str = "info"

    @property
    def embedded(self) -> bool:
        return not (self.database_url or self.redis_url or self.kafka_bootstrap)

    @property
    def distributed(self) -> bool:
        """PostgreSQL, Redis and Kafka all configured: what several processes need to share state."""
        return bool(self.database_url and self.redis_url and self.kafka_bootstrap)

    @property
    def cors_origin_set(self) -> frozenset[str]:
        from .policy import parse_origins

        return parse_origins(self.cors_origins)

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "ticketblitz.db"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `TICKETBLITZ_<NAME>` variables, then explicit overrides (CLI flags) not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _convert(f.type, raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port")
        if not (1 <= self.demo_seats <= 100 or (self.demo_seats % 100 == 0 and self.demo_seats <= 1_000_000)):
            raise ValueError(f"demo_seats: {self.demo_seats} seats: the demo event has rows of 100, so use 1..100 "
                             "or a multiple of 100 up to 1000000")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ValueError(f"log_level: {self.log_level!r} is not one of {', '.join(sorted(_LOG_LEVELS)).lower()}")
        if self.workers < 1:
            raise ValueError("workers: must be at least 1")
        if self.workers > 1 and not self.distributed:
            raise ValueError(
                "workers: the embedded default keeps its state in this process (SQLite has one writer); "
                "--workers > 1 needs distributed mode: set TICKETBLITZ_DATABASE_URL, TICKETBLITZ_REDIS_URL "
                "and TICKETBLITZ_KAFKA_BOOTSTRAP"
            )
        if self.kafka_bootstrap and not self.database_url:
            raise ValueError("kafka_bootstrap: the Kafka queue needs the PostgreSQL store (TICKETBLITZ_DATABASE_URL)")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes: must be at least 1024")
        if self.max_connections < 1:
            raise ValueError("max_connections: must be at least 1")
        if not 1024 <= self.max_head_bytes <= 1 << 20:
            raise ValueError("max_head_bytes: must be between 1024 and 1048576")
        if not 1 <= self.max_headers <= 10_000:
            raise ValueError("max_headers: must be between 1 and 10000")
        if not 64 <= self.max_target_bytes < self.max_head_bytes:
            raise ValueError("max_target_bytes: must be at least 64 and less than max_head_bytes")
        for name in ("store_timeout", "lock_timeout", "sweep_interval", "shutdown_grace", "max_wait",
                     "seat_map_max_age", "produce_timeout", "header_timeout", "body_timeout", "idle_timeout",
                     "telemetry_tick"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: must be a positive, finite number of seconds")
        for name in ("queue_limit", "intake_batch", "consumer_batch", "lock_ttl_ms", "intake_limit", "max_long_polls",
                     "max_ws_subscribers", "ws_subscriber_buffer", "max_frames_per_tick"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if not 0.01 <= self.telemetry_tick <= 1.0:
            raise ValueError("telemetry_tick: must be between 0.01 and 1 second")
        if self.consumers < 0:
            raise ValueError("consumers: must be 0 (intake only) or more")

    def ensure_admin_token(self) -> bool:
        """Generate the admin token when none was configured; True when one was generated."""
        if self.admin_token:
            return False
        self.admin_token = secrets.token_urlsafe(24)
        return True

    def describe(self) -> str:
        """One line per setting, secrets masked: printed at start."""
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRETS and value:
                value = _mask(str(value))
            elif value == "":
                value = '""'  # unset
            lines.append(f"  {f.name} = {value}")
        return "\n".join(lines)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _mask(value: str) -> str:
    if "password=" in value:
        value = re.sub(r"(password=)[^&\s]*", r"\1***", value)
    if "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    if "://" in value:
        return value
    return value[:3] + "***" if len(value) > 6 else "***"


def _convert(type_name: Any, raw: str, name: str) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: {raw!r} is not a valid {kind}") from None
    return raw
