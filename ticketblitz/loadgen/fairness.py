"""Pure measures of how fair a sale was, over what the fans saw (no I/O; unit-tested by hand).

- `overtakes`: how often a later fan beat an earlier one: of the (earlier, later) arrival pairs, those
  where the later fan got a seat and the earlier did not. Counted exactly in O(n log n) by sorting on
  arrival (arrival = when the fan's first request was sent); pairs that arrived at the same instant are
  ordered neither way and counted in no denominator.
- `prefix_order`: the waiting room's order check: the positions of the admitted fans are exactly 1..k.
- `issue_inversions`: pairs of admitted fans whose passes were issued against position order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby


@dataclass(frozen=True, slots=True)
class Overtakes:
    fans: int
    seated: int
    overtakes: int  # (earlier, later) pairs: the later got a seat, the earlier did not
    ordered_pairs: int  # all pairs with different arrival times
    mixed_pairs: int  # ordered pairs with exactly one seated fan

    @property
    def fraction(self) -> float:
        """Of all (earlier, later) pairs: the brief's measure (at most seated x unseated / pairs)."""
        return self.overtakes / self.ordered_pairs if self.ordered_pairs else 0.0

    @property
    def fraction_of_mixed(self) -> float:
        """Of the pairs where one got a seat and the other not: 0 = strictly first come first served,
        about 0.5 = a coin flip, 1 = strictly last come first served."""
        return self.overtakes / self.mixed_pairs if self.mixed_pairs else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"fans": self.fans, "seated": self.seated, "overtakes": self.overtakes,
                "ordered_pairs": self.ordered_pairs, "mixed_pairs": self.mixed_pairs,
                "fraction": self.fraction, "fraction_of_mixed": self.fraction_of_mixed}


def overtakes(arrivals: Iterable[tuple[float, bool]]) -> Overtakes:
    """`arrivals`: (arrival time, got a seat) per fan. Exact count of overtaking pairs."""
    ordered = sorted(arrivals, key=lambda a: a[0])
    fans = len(ordered)
    unseated_before = 0  # fans in strictly earlier groups without a seat
    seated_before = 0
    count = 0
    mixed = 0
    same_time_pairs = 0
    for _, group in groupby(ordered, key=lambda a: a[0]):
        members = list(group)
        seated = sum(1 for _, s in members if s)
        unseated = len(members) - seated
        count += seated * unseated_before
        mixed += seated * unseated_before + unseated * seated_before
        same_time_pairs += len(members) * (len(members) - 1) // 2
        unseated_before += unseated
        seated_before += seated
    return Overtakes(fans=fans, seated=seated_before, overtakes=count,
                     ordered_pairs=fans * (fans - 1) // 2 - same_time_pairs, mixed_pairs=mixed)


def prefix_order(admitted_positions: Iterable[int]) -> tuple[bool, str]:
    """(ok, detail): the admitted fans' positions are exactly 1..k (no gap, no repeat)."""
    positions = sorted(admitted_positions)
    k = len(positions)
    if positions == list(range(1, k + 1)):
        return True, f"admitted positions are 1..{k}"
    seen = set(positions)
    missing = [p for p in range(1, (positions[-1] if positions else 0) + 1) if p not in seen][:5]
    repeats = k - len(seen)
    return False, (f"{k} admitted, highest position {positions[-1] if positions else None}; "
                   f"first missing {missing}, {repeats} repeated")


def issue_inversions(issued: Sequence[tuple[int, float]], tolerance: float = 0.0) -> int:
    """(position, pass issue time) per admitted fan: pairs where a later position's pass was issued more
    than `tolerance` seconds before an earlier position's (counted exactly by merge sort)."""
    times = [t for _, t in sorted(issued)]

    def count(xs: list[float]) -> tuple[list[float], int]:
        if len(xs) <= 1:
            return xs, 0
        mid = len(xs) // 2
        left, a = count(xs[:mid])
        right, b = count(xs[mid:])
        merged: list[float] = []
        inv = a + b
        i = j = 0
        # an inversion: right[j] (a later position) issued more than `tolerance` before left[i]
        k = 0
        for r in right:  # for each later element, how many earlier ones are > r + tolerance
            while k < len(left) and left[k] <= r + tolerance:
                k += 1
            inv += len(left) - k
        while i < len(left) and j < len(right):
            if left[i] <= right[j]:
                merged.append(left[i])
                i += 1
            else:
                merged.append(right[j])
                j += 1
        merged += left[i:] + right[j:]
        return merged, inv

    return count(times)[1]
