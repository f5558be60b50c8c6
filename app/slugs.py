"""Slugs as the spec defines them: lowercase ASCII words joined by single hyphens, <= 80 chars."""

import re

from slugify import slugify as _slugify
from text_unidecode import unidecode

MAX_SLUG_LENGTH = 80
FALLBACK_SLUG = "essay"
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def slugify(text: str, fallback: str = FALLBACK_SLUG) -> str:
    """`Déjà vu` -> `deja-vu`; `It's` -> `it-s`; a title with no letters or digits -> fallback.

    python-slugify transliterates (text-unidecode), turns every other run of characters into one
    hyphen (apostrophes included, as the spec's reference slug shows) and cuts at a word boundary.
    """
    # Transliterate first, so a curly apostrophe separates words exactly like a straight one.
    slug = _slugify(
        unidecode(text),
        max_length=MAX_SLUG_LENGTH,
        word_boundary=True,
        save_order=True,
        regex_pattern=r"[^a-z0-9]+",
    )
    return slug or fallback


def is_slug(text: str) -> bool:
    """Whether `text` could be a slug we made: lets lookups answer 404 without a query, so a
    path like `/tags/%00` never reaches PostgreSQL (which refuses NUL in text with an error)."""
    return len(text) <= 120 and _SLUG.fullmatch(text) is not None
