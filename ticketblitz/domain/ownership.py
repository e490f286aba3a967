"""Who owns a booking: whoever holds its secret (API 1.1, "Who may do what"). Plain functions, no I/O.

A booking's secret is at least 128 random bits, URL-safe, handed out only in the answer that created
the booking (and in Idempotency-Key repeats); the server keeps only its SHA-256 and compares in
constant time. A booking requested with an Idempotency-Key gets a secret derived from the deployment's
key, the booking id and the Idempotency-Key (HMAC-SHA256), so that a repeat of the request can hand the
same secret back without the server ever storing it; others get a fresh random one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_BYTES = 24  # 192 random bits
KEY_BYTES = 32


def new_secret() -> str:
    """A fresh random secret (192 bits, URL-safe base64)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def derived_secret(key: bytes, booking_id: str, idempotency_key: str) -> str:
    """The secret of a booking requested with an Idempotency-Key: the same for every repeat."""
    mac = hmac.new(key, f"ticketblitz booking secret\x1f{booking_id}\x1f{idempotency_key}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def secret_hash(secret: str) -> str:
    """What the server stores of a secret."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def holds(stored_hash: str | None, credential: str) -> bool:
    """Whether `credential` is the secret whose hash is `stored_hash`, compared in constant time."""
    if not stored_hash or not credential:
        return False
    return hmac.compare_digest(secret_hash(credential), stored_hash)


def is_token(expected: str, credential: str | None) -> bool:
    """Whether `credential` is the (non-empty) token `expected`; an empty token never matches."""
    if not expected or not credential:
        return False
    return hmac.compare_digest(credential.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def deployment_key(configured: str) -> bytes | None:
    """The key for derived secrets from the configured text (None: use the one the store keeps)."""
    if not configured:
        return None
    return hashlib.sha256(b"ticketblitz secret key\x1f" + configured.encode()).digest()
