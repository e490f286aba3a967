"""atheris (coverage-guided) over the HTTP core: the raw-bytes property of tests/unit/test_http_fuzz.py.

    python tests/fuzz/fuzz_http_core.py -dict=tests/fuzz/http.dict -max_total_time=120   (`make fuzz`)

The first two bytes of each input choose where to cut the rest in two, so that incomplete heads and
bodies are fuzzed as well as whole ones. Not collected by pytest (no test_ prefix)."""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))

with atheris.instrument_imports():
    import ticketblitz.http.chunked
    import ticketblitz.http.core
    import ticketblitz.http.fields
    import ticketblitz.http.relay
    import ticketblitz.http.target  # noqa: F401

from test_http_fuzz import check_input


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    cut = int.from_bytes(data[:2], "big") % (len(data) - 1)
    check_input(data[2:], [cut] if cut else [])


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
