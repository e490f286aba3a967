"""The built-in flash-sale load generator: `ticketblitz flash-sale`, the visualizer's flash-sale button
(through `POST /api/admin/flash-sale`, which runs it as a child process) and `bench/flash.py`.

It only ever loads 127.0.0.1 (a load generator that could be aimed at any host would be a
denial-of-service tool) and is bounded in count (`MAX_CLIENTS` fans) and in time (a deadline per phase).
Modules: `client` (HTTP/1.1 on raw trio sockets), `scenario` (bounds, the event, each fan's request),
`burst`, `decisions`, `verify`, `report` (one whole run), `cli` (the command line).
"""

from .cli import add_parser, run
from .client import ALLOWED_HOST, parse_target
from .scenario import MAX_CLIENTS, MAX_SEATS, ROUTES, SetupError, event_body, seat_layout

__all__ = ["ALLOWED_HOST", "MAX_CLIENTS", "MAX_SEATS", "ROUTES", "SetupError", "add_parser", "event_body",
           "parse_target", "run", "seat_layout"]
