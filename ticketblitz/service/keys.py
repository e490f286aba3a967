"""Booking secrets for this deployment: random ones, or derived ones for Idempotency-Key requests so that
a repeat can hand the same secret back (the rules: `domain/ownership.py`)."""

from __future__ import annotations

import os

from ..config import Settings
from ..domain import ownership
from ..domain.model import Booking
from ..ports import Store


class SecretIssuer:
    def __init__(self) -> None:
        self._key: bytes | None = None

    async def load(self, settings: Settings, store: Store) -> None:
        """The deployment's key: from `TICKETBLITZ_SECRET_KEY`, else the one the store keeps (made once)."""
        self._key = ownership.deployment_key(settings.secret_key) or await store.server_key(
            os.urandom(ownership.KEY_BYTES))

    @property
    def key(self) -> bytes:
        if self._key is None:
            raise RuntimeError("the secret key is not loaded (BookingService.open)")
        return self._key

    def issue(self, booking_id: str, idempotency_key: str | None) -> tuple[str, str]:
        """(secret, its hash) for a new booking."""
        if idempotency_key is None:
            secret = ownership.new_secret()
        else:
            secret = ownership.derived_secret(self.key, booking_id, idempotency_key)
        return secret, ownership.secret_hash(secret)

    def recover(self, booking: Booking, idempotency_key: str | None) -> str | None:
        """The secret of an earlier booking for a repeat of its request (None when it cannot be rebuilt,
        e.g. a booking made without a key or under another deployment key)."""
        if idempotency_key is None:
            return None
        secret = ownership.derived_secret(self.key, booking.id, idempotency_key)
        return secret if ownership.holds(booking.secret_hash, secret) else None
