"""Settings come from WORKSHOP_* variables and a .env file; bad values fail at start."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings


def test_env_file_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(
        'WORKSHOP_SITE_NAME="Market Minds"\nWORKSHOP_TIMEZONE=Europe/Paris\nWORKSHOP_SITE_URL=https://blog.example/\n'
    )
    monkeypatch.chdir(tmp_path)
    for name in ("WORKSHOP_SITE_NAME", "WORKSHOP_TIMEZONE", "WORKSHOP_SITE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.site_name == "Market Minds"
    assert settings.timezone == "Europe/Paris"
    assert settings.site_url == "https://blog.example"


def test_environment_beats_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("WORKSHOP_AUTHOR=From File\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKSHOP_AUTHOR", "From Env")
    assert Settings().author == "From Env"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timezone", "Mars/Olympus_Mons"),
        ("page_size", 0),
        ("db_timeout_seconds", 0),
        ("max_body_bytes", 10),
        ("site_url", "example.com"),  # no scheme
        ("site_url", 'https://example.com/"onload="x'),  # would break out of an attribute
        ("site_url", "https://example.com/a b"),
        ("site_url", "javascript:alert(1)"),
        ("websub_hub", 'hub.example/"x'),  # no scheme, and a quote
        ("websub_hub", "ftp://hub.example/"),
    ],
)
def test_bad_settings_fail_at_start(name: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **{name: value})  # type: ignore[arg-type]
