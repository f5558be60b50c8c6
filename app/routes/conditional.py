"""The 304 every route sends when the client's copy is current."""

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Scope

# The gzip layer (`app/main.py`) names Accept-Encoding in the Vary of every answer it could
# compress, but a 304 has no body, so it leaves it out. A 304 must carry the Vary its 200 would
# (RFC 9110 section 15.4.5), or a shared cache may key what it revalidated without it. The
# routes' 304s, the stored essay pages' (app/routes/reader.py) and the static files'
# (app/templating.py) all name it from here.
VARY = "Accept-Encoding"


def accepts_gzip(scope: Scope) -> bool:
    """Whether the gzip layer (Starlette's GZipMiddleware, `app/main.py`) compresses the answer
    to this request: its own test, which the routes that choose a representation themselves
    (the API's posts, static files) must share."""
    return "gzip" in Headers(scope=scope).get("accept-encoding", "")


def not_modified(headers: Mapping[str, str]) -> Response:
    """304 Not Modified, with the validators and caching headers of the full answer."""
    return Response(status_code=304, headers={**headers, "Vary": VARY})
