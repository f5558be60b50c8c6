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
    # Not settings of the app: the test suite's database, and the Docker image's worker count.
    others = {"WORKSHOP_TEST_DATABASE_URL", "WORKSHOP_WORKERS"}
    assert "${WORKSHOP_WORKERS:-2}" in (ROOT / "Dockerfile").read_text()
    assert documented - expected - others == set()


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r'^TEST_COMMAND="(.+)"$', ci, re.MULTILINE)
    assert command is not None
    assert command.group(1) in README


def test_the_engines_publish_example_runs(live_server, engine) -> None:  # type: ignore[no-untyped-def]
    """The README's `publish()`, as an engine would copy it: a retry gets the same post."""
    from conftest import post_json

    from app import tokens

    block = re.search(r"```python\n(.*?def publish\(.*?)```", README, re.DOTALL)
    assert block is not None
    namespace: dict[str, object] = {}
    exec(block.group(1), namespace)  # noqa: S102 - our own README's example
    publish = namespace["publish"]
    token = tokens.create_token(engine, "engine")
    essay = post_json(cycle=812)
    first = publish(essay, token, base=live_server.url, patience=30)  # type: ignore[operator]
    again = publish(essay, token, base=live_server.url, patience=30)  # type: ignore[operator]
    assert first["id"] == again["id"] and first["url"].endswith(first["slug"])
