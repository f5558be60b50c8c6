"""WebSub publishing: tell the hub (setting `websub_hub`) which feeds changed, in the background.

The app factory calls `install(app)`; from then on every committed publish, edit or delete (made
through `app.posts`, whoever calls it: the ingest API, the CLI, the importer) queues the affected
feed URLs, and a daemon thread POSTs `hub.mode=publish&hub.url=<feed>` to the hub, retrying with
exponential backoff. The writer never waits for the hub and never sees its failures.

To ping by hand (e.g. from a script), `notify_hub(settings, urls)` does it synchronously.
"""

import json
import logging
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence

from fastapi import FastAPI
from sqlalchemy import Engine, select
from sqlmodel import Session

from app import events, feeds, posts
from app.config import Settings
from app.models import Revision
from app.slugs import slugify

log = logging.getLogger(__name__)

RETRY_DELAYS: Sequence[float] = (1, 2, 4, 8, 16, 32)  # seconds before each retry
TIMEOUT = 10.0
USER_AGENT = "Workshop-WebSub/1"


def _ping(hub: str, url: str) -> int:
    data = urllib.parse.urlencode({"hub.mode": "publish", "hub.url": url}).encode()
    request = urllib.request.Request(
        hub,
        data=data,
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", "User-Agent": USER_AGENT},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (operator's URL)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def notify_hub(
    settings: Settings,
    urls: Iterable[str],
    *,
    delays: Sequence[float] | None = None,
    stop: threading.Event | None = None,
) -> bool:
    """POST a publish ping for each URL to the hub; retry network errors, 429 and 5xx with
    backoff. True when the hub accepted every URL (any 2xx). Returns at once when no hub is set."""
    if not settings.websub_hub:
        return True
    delays = RETRY_DELAYS if delays is None else delays
    stop = stop or threading.Event()
    ok = True
    for url in urls:
        for attempt in range(len(delays) + 1):
            try:
                status = _ping(settings.websub_hub, url)
            except (OSError, ValueError) as exc:  # refused, timeout, DNS, bad hub URL
                status, reason = 0, repr(exc)
            else:
                reason = f"HTTP {status}"
            if 200 <= status < 300:
                break
            retryable = status == 0 or status == 429 or status >= 500
            if not retryable or attempt == len(delays) or stop.wait(delays[attempt]):
                log.warning("WebSub hub %s refused %s: %s", settings.websub_hub, url, reason)
                ok = False
                break
    return ok


def changed_feed_urls(engine: Engine, settings: Settings, post_id: int) -> list[str]:
    """The site feeds, and the feeds of every tag and story the post has now or had before this
    change (an edit that drops a tag changes that tag's feed too)."""
    tag_slugs: set[str] = set()
    story_slugs: set[str] = set()
    with Session(engine) as session:
        post = session.get(posts.Post, post_id)
        if post is not None:
            view = posts.load_views(session, [post])[0]
            tag_slugs.update(t.slug for t in view.tags)
            story_slugs.update(s.slug for s, _ in view.stories)
        previous = session.execute(
            select(Revision.snapshot)  # type: ignore[call-overload]
            .where(Revision.post_id == post_id)
            .order_by(Revision.id.desc())  # type: ignore[union-attr]
            .limit(1)
        ).scalar()
    if previous:
        before = json.loads(previous).get("input", {})
        tag_slugs.update(slugify(name) for name in before.get("tags", []))
        story_slugs.update(slugify(story["title"]) for story in before.get("stories", []))
    scopes = [feeds.SITE]
    scopes += [feeds.Scope("tag", slug) for slug in sorted(tag_slugs)]
    scopes += [feeds.Scope("story", slug) for slug in sorted(story_slugs)]
    return [url for scope in scopes for url in feeds.feed_urls(settings, scope)]


class HubNotifier:
    """One daemon thread per app that drains changed post ids and pings the hub."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.queue: queue.Queue[int | None] = queue.Queue()
        self.stop = threading.Event()
        # A daemon: a ping still queued at shutdown is dropped rather than holding the exit.
        self.thread = threading.Thread(target=self._run, name="websub", daemon=True)
        self.thread.start()

    def __call__(self, post_id: int) -> None:
        """The events subscriber: only enqueue, the writer must not wait."""
        self.queue.put(post_id)

    def _run(self) -> None:
        while not self.stop.is_set():
            post_id = self.queue.get()
            if post_id is None:
                return
            try:
                urls = changed_feed_urls(self.engine, self.settings, post_id)
                notify_hub(self.settings, urls, stop=self.stop)
            except Exception:
                log.exception("WebSub notification for post %s failed", post_id)

    def close(self) -> None:
        self.stop.set()
        self.queue.put(None)


def install(app: FastAPI) -> HubNotifier | None:
    """Subscribe the app's hub notifier to content changes when a hub is configured."""
    settings: Settings = app.state.settings
    if not settings.websub_hub:
        return None
    notifier = HubNotifier(app.state.engine, settings)
    events.subscribe(app.state.engine, notifier)
    app.state.websub = notifier
    return notifier


def uninstall(app: FastAPI) -> None:
    notifier: HubNotifier | None = getattr(app.state, "websub", None)
    if notifier is not None:
        events.unsubscribe(app.state.engine, notifier)
        notifier.close()
