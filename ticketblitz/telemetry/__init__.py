"""Telemetry: the hub (counters, frames to /ws subscribers), /metrics through prometheus_client, and the
cross-process relay on Redis. Wire format: docs/API.md (/ws)."""

from .hub import Subscriber, Telemetry, verdict_of
from .rules import PRIVATE_MEMBERS, Frame, iso_time

__all__ = ["PRIVATE_MEMBERS", "Frame", "Subscriber", "Telemetry", "iso_time", "verdict_of"]
