"""The pure parts of the hot reads: Accept-Encoding, If-None-Match, Vary, the compact seat-map form."""

from __future__ import annotations

import gzip

import orjson

from ticketblitz.reads import accepts_gzip, merge_vary, none_match, query_value
from ticketblitz.service.seatmaps import compact_document, prepare


def test_accept_encoding() -> None:
    for yes in ("gzip", "GZIP", "x-gzip", "deflate, gzip;q=0.1", "*", "br, *;q=0.5", " gzip ; q=1"):
        assert accepts_gzip(yes), yes
    for no in (None, "", "identity", "gzip;q=0", "gzip;q=0.0", "*;q=0", "br", "gzip;q=x", "*, gzip;q=0"):
        assert not accepts_gzip(no), no


def test_if_none_match() -> None:
    tags = ('"api-1"', '"api-1-gz"')
    assert none_match('"api-1"', tags) and none_match('W/"api-1-gz"', tags) and none_match(" * ", tags)
    assert none_match('"x", "api-1"', tags)
    assert not none_match(None, tags) and not none_match("", tags) and not none_match('"api-2"', tags)
    assert not none_match("api-1", tags)  # unquoted: not an entity tag


def test_vary_and_query() -> None:
    assert merge_vary(None, "Origin") == "Origin"
    assert merge_vary("Accept-Encoding", "Origin") == "Accept-Encoding, Origin"
    assert merge_vary("origin", "Origin") == "origin"
    assert query_value("form=compact&x=1", "form") == "compact"
    assert query_value("x=1", "form") is None and query_value("form=", "form") == ""
    assert query_value("form=a%20b&form=c", "form") == "a b"


def test_compact_document_and_prepare() -> None:
    seats = [{"id": f"{s}-{r}-{n}", "section": s, "row": r, "number": n, "status": "available"}
             for s, rows, width in (("A", 2, 3), ("B", 1, 2)) for r in range(1, rows + 1) for n in range(1, width + 1)]
    seats[4]["status"] = "held"  # A-2-2
    seats[7]["status"] = "sold"  # B-1-2
    api = orjson.dumps({"event_id": "evt_x", "seats": seats})
    compact = orjson.loads(compact_document(api))
    assert compact == {"event_id": "evt_x", "form": "compact", "sections": [
        {"name": "A", "rows": 2, "seats_per_row": 3, "status": "aaaaha"},
        {"name": "B", "rows": 1, "seats_per_row": 2, "status": "as"}]}
    built = prepare("api", api)
    assert gzip.decompress(built.gzip) == api and built.etag.startswith('"api-') and built.etag.endswith('"')
    assert built.gzip_etag == built.etag[:-1] + '-gz"'
    assert prepare("api", api) == built  # the same bytes, the same tag and encoding (mtime 0)
