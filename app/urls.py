"""Absolute and site-relative URLs, built in one place so pages, feeds and the API agree."""

from urllib.parse import quote

from app.config import Settings
from app.models import Post


def post_path(post: Post) -> str:
    return f"/read/{post.id}/{post.slug}"


def permalink(settings: Settings, post: Post) -> str:
    return settings.site_url + post_path(post)


def absolute(settings: Settings, path: str) -> str:
    return settings.site_url + path


def tag_path(slug: str) -> str:
    return f"/tags/{quote(slug)}"


def story_path(slug: str) -> str:
    return f"/stories/{quote(slug)}"
