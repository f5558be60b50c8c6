"""After-commit notifications: the post service announces that content changed, and whoever cares
(the WebSub pinger, later perhaps a cache purger) subscribes, without the service knowing about
HTTP or any other subscriber.

Subscriptions are per database (keyed by its URL), so a write through any engine on that database
reaches them, and two apps on different databases in one process, as in the tests, never see each
other's writes.

    events.subscribe(engine, callback)   # callback(post_id) runs right after each commit
    events.unsubscribe(engine, callback)

Callbacks run in the writer's thread, so they must only hand work off (to a queue or a thread);
one that raises is logged and ignored: a subscriber can never fail or undo a write.
"""

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session

log = logging.getLogger(__name__)

Callback = Callable[[int], None]

_lock = threading.Lock()
_subscribers: dict[str, list[Callback]] = {}


def _key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def subscribe(engine: Engine, callback: Callback) -> None:
    with _lock:
        _subscribers.setdefault(_key(engine), []).append(callback)


def unsubscribe(engine: Engine, callback: Callback) -> None:
    with _lock:
        callbacks = _subscribers.get(_key(engine), [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            _subscribers.pop(_key(engine), None)


def content_changed(session: Session, post_id: int) -> None:
    """Called by the post service after a write that changed `post_id` has committed."""
    with _lock:
        if not _subscribers:
            return
        callbacks = list(_subscribers.get(_key(session.get_bind()), []))  # type: ignore[arg-type]
    for callback in callbacks:
        try:
            callback(post_id)
        except Exception:
            log.exception("content_changed subscriber %r failed for post %s", callback, post_id)
