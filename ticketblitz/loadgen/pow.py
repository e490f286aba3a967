"""The waiting room's proof of work (docs/API.md, "Waiting room"), the client's side: find a decimal
`proof` such that SHA-256 of the UTF-8 bytes `"{challenge}:{user_id}:{proof}"` starts with `bits` zero
bits. `verify` is the server's own test (`domain/waiting_room.py`), so a proof `solve` returns is one it accepts.

Pure and synchronous (hashlib only): the prefix `"{challenge}:{user_id}:"` is hashed once and copied
for each candidate, so a try costs one `copy` + `update` of a few digits + `digest`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# the server's own test of a proof, so that what `solve` finds is what the server accepts
from ..domain.waiting_room import leading_zero_bits, proof_digest

MAX_BITS = 256


def _check_bits(bits: int) -> None:
    if not 0 <= bits <= MAX_BITS:
        raise ValueError(f"bits {bits}: must be 0..{MAX_BITS}")


def verify(challenge: str, user_id: str, proof: str, bits: int) -> bool:
    """True when `proof` is a decimal string whose digest starts with `bits` zero bits."""
    _check_bits(bits)
    if not proof.isascii() or not proof.isdecimal():
        return False
    return leading_zero_bits(proof_digest(challenge, user_id, proof)) >= bits


@dataclass(frozen=True, slots=True)
class Solution:
    proof: str
    tries: int  # hashes computed, the found one included


def solve(challenge: str, user_id: str, bits: int, start: int = 0, max_tries: int | None = None) -> Solution:
    """The first proof (a decimal counter from `start`) that `verify` accepts. About 2**bits tries on
    average; `max_tries` bounds the search (ValueError when it finds nothing within it)."""
    _check_bits(bits)
    prefix = hashlib.sha256(f"{challenge}:{user_id}:".encode())
    shift = 256 - bits
    limit = start + max_tries if max_tries is not None else None
    n = start
    while limit is None or n < limit:
        h = prefix.copy()
        h.update(str(n).encode("ascii"))
        if int.from_bytes(h.digest(), "big") >> shift == 0:
            return Solution(str(n), n - start + 1)
        n += 1
    raise ValueError(f"no proof with {bits} zero bits in {max_tries} tries from {start}")
