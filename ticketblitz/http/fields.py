"""Header fields (RFC 9110 §5, RFC 9112 §5) and the refusal every HTTP check answers with."""

from __future__ import annotations

import re

# token (RFC 9110 §5.6.2): method names and field names
TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_VCHAR = r"\x21-\x7e\x80-\xff"  # visible ASCII and obs-text: what a field value may contain, with SP/HTAB inside

# One complete field line at the start of a line: name ":" OWS value OWS CRLF. No space before the colon,
# no obs-fold (a line starting with SP/HTAB is no name), no control characters, no bare CR or LF.
# Run over a block of CRLF-terminated lines, `findall` finds one (name, value) per line exactly when
# every line is well-formed: a shorter list means a bad line (see `field_problem`).
FIELD_LINES_RE = re.compile(rf"(?m)^([{TCHAR}]+):[ \t]*((?:[{_VCHAR}]+(?:[ \t]+[{_VCHAR}]+)*)?)[ \t]*\r\n")
TOKEN_RE = re.compile(rf"[{TCHAR}]+")
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Refusal:
    """A request the door will not serve: the status to answer with and why (h11's
    `RemoteProtocolError.error_status_hint`, as a value). The connection closes after answering it."""

    __slots__ = ("detail", "headers", "status")

    def __init__(self, status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status = status
        self.detail = detail
        self.headers = headers

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.detail!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Refusal) and (self.status, self.detail) == (other.status, other.detail)

    __hash__ = None  # type: ignore[assignment]


def field_problem(lines: str) -> str:
    """Why a block of field lines did not parse: the detail of its 400 (slow path, errors only)."""
    for line in lines.split("\r\n"):
        if not line:
            continue
        if line[0] in " \t":
            return "header: obsolete line folding (a line starting with whitespace) is not allowed"
        name, colon, value = line.partition(":")
        if not colon:
            return f"header: a line without a colon: {line[:40]!r}"
        if not name:
            return "header: a field with an empty name"
        if name[-1] in " \t":
            return f"header {name.strip()[:40]!r}: whitespace before the colon is not allowed"
        if not TOKEN_RE.fullmatch(name):
            return f"header {name[:40]!r}: the name is not a token"
        if "\r" in value or "\n" in value:
            return f"header {name[:40]!r}: a bare CR or LF"
        if _CTL_RE.search(value):
            return f"header {name[:40]!r}: a control character in the value"
    return "header: a malformed field line"
