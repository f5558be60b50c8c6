"""Slugs as the spec defines them: lowercase ASCII words joined by single hyphens, <= 80 chars."""

from slugify import slugify as _slugify
from text_unidecode import unidecode

MAX_SLUG_LENGTH = 80
FALLBACK_SLUG = "essay"


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
