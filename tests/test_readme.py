"""The README documents every setting and the exact test command CI runs."""

import re
from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`(WORKSHOP_[A-Z0-9_]+)`", README))
    expected = {f"WORKSHOP_{name.upper()}" for name in Settings.model_fields}
    assert expected - documented == set()
    assert documented - expected - {"WORKSHOP_TEST_DATABASE_URL"} == set()


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r'^TEST_COMMAND="(.+)"$', ci, re.MULTILINE)
    assert command is not None
    assert command.group(1) in README
