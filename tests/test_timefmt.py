from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from app.timefmt import cycle_line, cycle_line_time

LA = ZoneInfo("America/Los_Angeles")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@pytest.mark.parametrize(
    ("instant", "zone", "shown"),
    [
        # The reference essay.
        ("2026-04-03T17:51:27Z", "America/Los_Angeles", "April 3, 2026 — 10:51 AM"),
        # Daylight saving starts 2026-03-08 10:00 UTC in Los Angeles (PST -8 -> PDT -7).
        ("2026-03-08T09:59:00Z", "America/Los_Angeles", "March 8, 2026 — 1:59 AM"),
        ("2026-03-08T10:00:00Z", "America/Los_Angeles", "March 8, 2026 — 3:00 AM"),
        # ... and ends 2026-11-01 09:00 UTC (1 AM happens twice).
        ("2026-11-01T08:30:00Z", "America/Los_Angeles", "November 1, 2026 — 1:30 AM"),
        ("2026-11-01T09:30:00Z", "America/Los_Angeles", "November 1, 2026 — 1:30 AM"),
        # The UTC date is a day ahead of the local date.
        ("2026-04-04T03:15:00Z", "America/Los_Angeles", "April 3, 2026 — 8:15 PM"),
        ("2026-01-01T07:59:59Z", "America/Los_Angeles", "December 31, 2025 — 11:59 PM"),
        # Across the date line: Kiribati (+14) and Samoa, noon and midnight.
        ("2026-04-03T10:00:00Z", "Pacific/Kiritimati", "April 4, 2026 — 12:00 AM"),
        ("2026-04-03T00:00:00Z", "Pacific/Apia", "April 3, 2026 — 1:00 PM"),
        ("2026-04-03T12:00:00Z", "UTC", "April 3, 2026 — 12:00 PM"),
        ("2026-04-03T12:05:00Z", "Asia/Kolkata", "April 3, 2026 — 5:35 PM"),
    ],
)
def test_local_time_table(instant: str, zone: str, shown: str) -> None:
    assert cycle_line_time(utc(instant), ZoneInfo(zone)) == shown


def test_cycle_line_matches_the_reference_essay() -> None:
    assert (
        cycle_line(803, utc("2026-04-03T17:51:27Z"), LA) == "Cycle 803 | April 3, 2026 — 10:51 AM"
    )


def test_cycle_line_without_cycle_shows_only_time() -> None:
    assert cycle_line(None, utc("2026-04-03T17:51:27Z"), LA) == "April 3, 2026 — 10:51 AM"
