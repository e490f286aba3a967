"""The booking service: intake batcher, decider, hold sweeper and edge follow-ups, each a task started in
the serving nursery, behind the `BookingService` facade that both HTTP doors call."""

from .batcher import Accepted, IntakeBatcher
from .catalog import DEMO_EVENT_ID, QUEUE_DEMO_EVENT_ID, EventCatalog
from .decider import Decider
from .facade import BookingService
from .followups import EdgeFollowUps
from .sweeper import HoldSweeper

__all__ = [
    "DEMO_EVENT_ID",
    "QUEUE_DEMO_EVENT_ID",
    "Accepted",
    "BookingService",
    "Decider",
    "EdgeFollowUps",
    "EventCatalog",
    "HoldSweeper",
    "IntakeBatcher",
]
