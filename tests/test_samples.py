"""The sample essays in `samples/` parse and render back to the same bytes."""

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from app import exportfmt
from app.slugs import slugify

SAMPLES = Path(__file__).parent.parent / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*.txt"))
SITE_TZ = ZoneInfo("America/Los_Angeles")
PERMALINK_PREFIX = "Permanent link: "


def test_samples_exist() -> None:
    # An empty glob would make the parametrized test below pass vacuously.
    assert len(SAMPLE_FILES) >= 8


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_sample_round_trips(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    parsed = exportfmt.parse(text)

    last_line = text.rstrip("\n").splitlines()[-1]
    assert last_line.startswith(PERMALINK_PREFIX)
    link = last_line.removeprefix(PERMALINK_PREFIX)
    assert link.endswith(f"/read/{parsed.post_id}/{slugify(parsed.post.title)}")

    assert exportfmt.render(parsed.post, permalink=link, tz=SITE_TZ) == text
