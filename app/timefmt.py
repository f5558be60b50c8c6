"""Showing UTC instants in the site's timezone, the way the blog always has."""

from datetime import datetime
from zoneinfo import ZoneInfo


def local(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz)


def cycle_line_time(instant: datetime, tz: ZoneInfo) -> str:
    """`April 3, 2026 — 10:51 AM` (no leading zeros, as in the reference essay)."""
    t = instant.astimezone(tz)
    hour = t.hour % 12 or 12
    return f"{t:%B} {t.day}, {t.year} — {hour}:{t:%M} {t:%p}"


def long_date(instant: datetime, tz: ZoneInfo) -> str:
    t = instant.astimezone(tz)
    return f"{t:%B} {t.day}, {t.year}"


def cycle_line(cycle: int | None, instant: datetime, tz: ZoneInfo) -> str:
    when = cycle_line_time(instant, tz)
    return f"Cycle {cycle} | {when}" if cycle is not None else when
