"""Settings, read from WORKSHOP_* environment variables and a .env file."""

import re
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting is documented in the README's Settings table (a test checks it)."""

    model_config = SettingsConfigDict(
        env_prefix="WORKSHOP_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = "sqlite:///./workshop.db"
    site_url: str = "http://127.0.0.1:8000"
    site_name: str = "Workshop"
    site_description: str = "Essays from a market-debate engine, one per cycle."
    timezone: str = "America/Los_Angeles"
    author: str = "Workshop"
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_timeout_seconds: float = Field(default=10.0, gt=0)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    page_size: int = Field(default=20, ge=1, le=200)
    feed_size: int = Field(default=20, ge=1, le=200)
    auth_fail_limit: int = Field(default=10, ge=1)
    auth_fail_window_seconds: int = Field(default=300, ge=1)
    trusted_proxies: str = ""
    idempotency_key_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    response_cache: bool = True
    response_cache_max_entries: int = Field(default=1000, ge=1)
    response_cache_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    response_cache_max_entry_bytes: int = Field(default=1024 * 1024, ge=1024)
    page_copy_max_entries: int = Field(default=200_000, ge=0)
    keep_alive_seconds: int = Field(default=5, ge=1)
    websub_hub: str = ""
    log_json: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)  # a typo fails at start, not on every page
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        for entry in filter(None, (e.strip() for e in value.split(","))):
            ip_network(entry, strict=False)  # raises on a typo, at start rather than per request
        return value

    @cached_property
    def trusted_proxy_networks(self) -> list[IPv4Network | IPv6Network]:
        return [
            ip_network(e.strip(), strict=False)
            for e in self.trusted_proxies.split(",")
            if e.strip()
        ]

    @field_validator("site_url")
    @classmethod
    def _plain_url(cls, value: str) -> str:
        """An http(s) URL with no character that HTML or JSON would have to escape: stored
        fragments hold a placeholder that is replaced by this text as it is (app/fragments.py)."""
        if not re.fullmatch(r"https?://[A-Za-z0-9._~:/\[\]@!$()*+,;=%-]+", value):
            raise ValueError(
                "must be an http:// or https:// URL without quotes, spaces, <, >, & or \\"
            )
        return value.rstrip("/")

    @field_validator("websub_hub")
    @classmethod
    def _hub_url(cls, value: str) -> str:
        """Empty (no hub), or an http(s) URL: the feeds announce it and every write pings it;
        a typo otherwise showed only as a log line a minute after a write."""
        if value and not re.fullmatch(r"https?://[^\s\"'<>\\]+", value):
            raise ValueError("must be empty or an http:// or https:// URL")
        return value

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
