"""Entity tags that name a state of a resource, whichever representation carries them:
the routes' preconditions (`app/routes/ingest.py`, `app/posts.py`) and the response cache's
304s (`app/cache.py`) compare them the same way."""

# The gzipped answer of a resource is a representation of its own, so its strong ETag must
# differ from the plain one's (RFC 9110 sections 8.8.1 and 8.8.3): a cache that held both under
# one strong tag could splice their bytes (ranges, partial updates). Its tag is the plain one
# with this suffix inside the quotes, as Apache httpd's mod_deflate makes it. Both tags name the
# same state of the resource, so preconditions take either one (httpd strips the suffix again
# when it compares): a client sends back the tag it got, whichever encoding it asked for.
GZIP_SUFFIX = "-gzip"


def gzip_etag(etag: str) -> str:
    """The strong ETag of the gzipped representation whose plain one is `etag`:
    `"p1v1"` -> `"p1v1-gzip"`."""
    return f'{etag[:-1]}{GZIP_SUFFIX}"'


def weak(tag: str) -> str:
    """`tag` as a weak validator (`W/"..."`): what a compressed copy of a file's bytes gets, as
    nginx gives it (app/templating.py, static files)."""
    return tag if tag.startswith("W/") else f"W/{tag}"


def state_tag(tag: str) -> str:
    """The plain strong tag of the state `tag` names, whatever form it came in: weakened by a
    proxy (`W/`) or the gzipped representation's."""
    tag = tag.strip().removeprefix("W/")
    if tag.endswith(GZIP_SUFFIX + '"'):
        return tag[: -len(GZIP_SUFFIX) - 1] + '"'
    return tag


def state_tags(condition: str) -> set[str]:
    """The states an If-Match or If-None-Match value names, each as its plain strong tag
    (`*` stays `*`): `"p1v1-gzip", W/"p1v2"` -> `{"p1v1", "p1v2"}`."""
    return {state_tag(tag) for tag in condition.split(",")}


def matches(condition: str, etag: str) -> bool:
    """Whether an If-Match or If-None-Match value names the state `etag` is a tag of: `*`, or
    any of its tags in any form (plain, gzipped, weakened)."""
    wanted = state_tags(condition)
    return "*" in wanted or state_tag(etag) in wanted
