"""Figures derived from the whole archive, computed once per content version in each worker.

The archive's month counts and the sitemaps' lastmods read every published essay (an index range
per month, or every row): 36 ms and 300 ms at 100,000 essays. With the response cache on they
were computed once per content version anyway; with it off (or for a page the cache let go) they
were computed per request, so those pages slowed as the archive grew. Now each worker keeps the
latest value of each figure with the content version it was computed at.

Never stale: the version is read first, in the same session, so a figure is computed from that
version's content or a newer one; a request at a newer version computes it again. On SQLite both
reads share one snapshot; on PostgreSQL (READ COMMITTED) the figure may come from a newer commit
than its version, which the next write's version replaces.
"""

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

from sqlalchemy import Engine
from sqlmodel import Session

T = TypeVar("T")

_values: dict[Hashable, tuple[int, Any]] = {}  # key -> (content version, value)
_lock = threading.Lock()  # sync routes run in the thread pool


def at_version(session: Session, key: Hashable, compute: Callable[[], T]) -> T:
    """`compute()`, or the value it gave at the current content version."""
    from app.posts import content_version  # the post service imports modules that use this

    bind = cast(Engine, session.get_bind())  # the app binds sessions to engines, never connections
    key = (str(bind.url), key)  # one process may serve several databases (tests)
    version = content_version(session)
    found = _values.get(key)
    if found is not None and found[0] == version:
        return found[1]
    value = compute()
    with _lock:
        kept = _values.get(key)
        if kept is None or kept[0] <= version:  # a slower request never puts an older one back
            _values[key] = (version, value)
    return value


def forget() -> None:
    """Tests: every figure is computed again."""
    _values.clear()
