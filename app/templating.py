"""Jinja2 environment: autoescaped templates, site-wide globals and date filters."""

import hashlib
from importlib.resources import files
from pathlib import Path

from fastapi.templating import Jinja2Templates

from app import timefmt, urls
from app.config import Settings


def static_url_factory() -> "callable":  # type: ignore[valid-type]
    root = Path(str(files("app.static")))
    cache: dict[str, str] = {}

    def static_url(name: str) -> str:
        # Cache-busting: the file's content hash in the query, so it can be cached for a year.
        if name not in cache:
            digest = hashlib.sha256((root / name).read_bytes()).hexdigest()[:12]
            cache[name] = f"/static/{name}?v={digest}"
        return cache[name]

    return static_url


def make_templates(settings: Settings) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(files("app.templates")))
    env = templates.env
    env.autoescape = True
    env.globals.update(settings=settings, static_url=static_url_factory(), urls=urls)
    env.filters["cycle_line"] = lambda post: timefmt.cycle_line(post.cycle, post.published_at, settings.tz)
    env.filters["long_date"] = lambda instant: timefmt.long_date(instant, settings.tz)
    env.filters["percent"] = lambda value: f"{round(value * 100)}%"
    return templates
