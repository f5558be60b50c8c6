"""What every layer that picks a representation shares: whether the client accepts gzip, and
the 304 every route sends when the client's copy is current."""

import re
from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import Scope

# The gzip layer (`app/main.py`) names Accept-Encoding in the Vary of every answer it could
# compress, but a 304 has no body, so it leaves it out. A 304 must carry the Vary its 200 would
# (RFC 9110 section 15.4.5), or a shared cache may key what it revalidated without it. The
# routes' 304s, the stored essay pages' (app/routes/reader.py) and the static files'
# (app/templating.py) all name it from here.
VARY = "Accept-Encoding"

# RFC 9110 section 12.4.2; anything else in `q=` is malformed, and its entry refuses.
_QVALUE = re.compile(rb"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_ZERO = re.compile(rb"0(?:\.0{0,3})?")
_GZIP_CODINGS = (b"gzip", b"x-gzip")  # "x-gzip" is gzip (RFC 9110 section 8.4.1.3)


def gzip_acceptable(accept_encoding: bytes) -> bool:
    """Whether an Accept-Encoding value (all its field lines, joined by commas) accepts gzip
    (RFC 9110 section 12.5.3): gzip named with a weight above 0, or, gzip not named, `*` so.
    Without the header, nothing is compressed (`b""` says no).

    The one decision the gzip layer (`app/main.py`), the response cache's key (`app/cache.py`),
    the stored essay pages (`app/routes/reader.py`), the API's posts and the static files all
    take, so that every request under one cache key gets the same representation."""
    # Asked for every request before the cache and the stored pages answer. A value without
    # parameters (`gzip, deflate, br`, what browsers send) weighs every coding it names 1, so
    # substring searches answer it: no split, and no copy for the usual lowercase `gzip`.
    # `find`, not `in`: `in` on bytes first tries its operand as an integer, and that failed
    # conversion (an exception raised and cleared) costs more than the search itself.
    if accept_encoding.find(b";") < 0:
        return (
            accept_encoding.find(b"gzip") >= 0
            or accept_encoding.find(b"*") >= 0
            or accept_encoding.lower().find(b"gzip") >= 0
        )
    return _weighed_gzip_acceptable(accept_encoding)


def _weighed_gzip_acceptable(accept_encoding: bytes) -> bool:
    # By hand: Starlette parses no Accept-Encoding, and this runs on raw bytes before any
    # request object exists. Where a coding is named more than once and the entries disagree,
    # the refusal wins: the plain answer is always a safe one.
    gzip = star = None
    for entry in accept_encoding.lower().split(b","):
        coding, _, parameters = entry.partition(b";")
        coding = coding.strip()
        if coding in _GZIP_CODINGS:
            gzip = _weight_above_zero(parameters) and gzip is not False
        elif coding == b"*":
            star = _weight_above_zero(parameters) and star is not False
    return gzip if gzip is not None else bool(star)


def _weight_above_zero(parameters: bytes) -> bool:
    """Whether an entry's parameters (after its first `;`) give it a weight above 0: no `q`
    is weight 1; a malformed `q` refuses."""
    for parameter in parameters.split(b";"):
        name, _, value = parameter.partition(b"=")
        if name.strip() == b"q":
            value = value.strip()
            return _QVALUE.fullmatch(value) is not None and _ZERO.fullmatch(value) is None
    return True


def accepts_gzip(scope: Scope) -> bool:
    """`gzip_acceptable` for an ASGI request: every Accept-Encoding field line it carries, as
    one list (RFC 9110 section 5.3)."""
    return gzip_acceptable(
        b",".join(value for name, value in scope["headers"] if name == b"accept-encoding")
    )


def not_modified(headers: Mapping[str, str]) -> Response:
    """304 Not Modified, with the validators and caching headers of the full answer."""
    return Response(status_code=304, headers={**headers, "Vary": VARY})
