"""The four forms of an HTTP/1.1 request-target (RFC 9112 §3.2) and the percent-decoded path.

Plain functions of strings; every failure is a `TargetError` carrying the detail of a `400`, never an
exception of the decoder (bad `%` escapes, bytes that are not UTF-8)."""

from __future__ import annotations

import re
from enum import Enum
from urllib.parse import unquote_to_bytes


class TargetForm(Enum):
    ORIGIN = "origin"  # /path?query
    ABSOLUTE = "absolute"  # http://host/path?query (a path-less one means "/")
    AUTHORITY = "authority"  # host:port, only with CONNECT
    ASTERISK = "asterisk"  # *, only with OPTIONS


class TargetError(ValueError):
    """The request-target cannot be used: the detail of a 400."""


# host [":" port], where host is an IP literal, or a reg-name / IPv4 address (RFC 3986 §3.2.2). The
# sub-delimiter "," is left out: no real host name has one, and refusing it keeps two Host header
# fields (joined "a, b") from passing as one.
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+;=]+)"
HOST_RE = re.compile(rf"(?:{_HOST}(?::[0-9]{{0,5}})?)?")
AUTHORITY_RE = re.compile(rf"{_HOST}:[0-9]{{1,5}}")
ABSOLUTE_RE = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#]*)([^?#]*)(?:\?([^#]*))?")
BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def decode_path(raw: str) -> str:
    """The percent-decoded path; TargetError for a bad escape or bytes that are not UTF-8."""
    if "%" not in raw:
        return raw  # visible ASCII only (checked by the caller): already text
    if BAD_ESCAPE_RE.search(raw):
        raise TargetError("request-target: a '%' not followed by two hex digits")
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise TargetError("request-target: the percent-decoded path is not UTF-8") from None


def parse_target(method: str, target: str) -> tuple[TargetForm, str, str, str, str | None]:
    """(form, raw path, decoded path, query, authority) of a request-target of visible ASCII.

    The authority is the target's own (absolute and authority form), None otherwise. Authority and
    asterisk forms have an empty path. Raises TargetError when the form does not fit the method."""
    if target[0] == "/":
        if "#" in target:
            raise TargetError("request-target: a fragment ('#') is not part of a request")
        raw, _, query = target.partition("?")
        if method == "CONNECT":
            raise TargetError("request-target: CONNECT needs the authority form host:port")
        return TargetForm.ORIGIN, raw, decode_path(raw), query, None
    if target == "*":
        if method != "OPTIONS":
            raise TargetError("request-target: the asterisk form '*' is only for OPTIONS")
        return TargetForm.ASTERISK, "", "", "", None
    if method == "CONNECT":
        if not AUTHORITY_RE.fullmatch(target):
            raise TargetError("request-target: CONNECT needs the authority form host:port")
        return TargetForm.AUTHORITY, "", "", "", target
    match = ABSOLUTE_RE.fullmatch(target)
    if match is None:
        if AUTHORITY_RE.fullmatch(target):
            raise TargetError("request-target: the authority form host:port is only for CONNECT")
        raise TargetError("request-target: neither /path, http://host/path, host:port (CONNECT) nor * (OPTIONS)")
    scheme, authority, raw, query = match.groups()
    if scheme.lower() not in ("http", "https"):
        raise TargetError(f"request-target: scheme {scheme[:16]!r} is not http or https")
    if "@" in authority:
        raise TargetError("request-target: user information in the authority is not allowed")
    if not authority or not HOST_RE.fullmatch(authority):
        raise TargetError("request-target: the authority of an absolute-form target is not host[:port]")
    raw = raw or "/"  # "http://host" and "http://host?q" mean the path "/"
    return TargetForm.ABSOLUTE, raw, decode_path(raw), query or "", authority
