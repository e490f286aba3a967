"""HTTP surface: the Quart-Trio app (everything) served by Hypercorn's Trio server."""

from .app import create_app

__all__ = ["create_app"]
