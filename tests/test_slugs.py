import pytest

from app.slugs import MAX_SLUG_LENGTH, is_slug, slugify

REFERENCE = "The Mega-Cap Selloff Is Real, But It's Not a Regime Signal Yet"


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        (REFERENCE, "the-mega-cap-selloff-is-real-but-it-s-not-a-regime-signal-yet"),
        ("Déjà Vu in the Bond Market", "deja-vu-in-the-bond-market"),
        ("It’s Not a Regime Signal", "it-s-not-a-regime-signal"),  # curly apostrophe
        ("It's Not a Regime Signal", "it-s-not-a-regime-signal"),  # straight apostrophe
        ("“Quoted” — and Dashed", "quoted-and-dashed"),
        ("QQQ +0.12% / IWM −1.75%", "qqq-0-12-iwm-1-75"),
        ("  --Leading and trailing--  ", "leading-and-trailing"),
        ("Straße & Ærø", "strasse-aero"),
        ("Ünïcödé naïve café", "unicode-naive-cafe"),
        ("北京 Rally", "bei-jing-rally"),
        ("Cycle 803", "cycle-803"),
        ("🚀🚀🚀", "essay"),
        ("?!", "essay"),
    ],
)
def test_slug_table(title: str, slug: str) -> None:
    assert slugify(title) == slug


def test_long_titles_cut_at_a_word_boundary() -> None:
    title = " ".join(["selloff"] * 60)  # ~480 characters
    slug = slugify(title)
    assert len(slug) <= MAX_SLUG_LENGTH
    assert slug.endswith("selloff") and "--" not in slug


def test_300_character_single_word_is_cut_to_80() -> None:
    slug = slugify("a" * 300)
    assert slug == "a" * MAX_SLUG_LENGTH


@pytest.mark.parametrize("title", ["x" * 300, "Word " * 75, "é" * 300, "a-" * 150])
def test_slug_shape(title: str) -> None:
    slug = slugify(title)
    assert 0 < len(slug) <= MAX_SLUG_LENGTH
    assert slug == slug.strip("-") and "--" not in slug
    assert all(c.isascii() and (c.islower() or c.isdigit() or c == "-") for c in slug)
    assert is_slug(slug)  # lookups refuse anything else without a query


@pytest.mark.parametrize("text", ["", "-a", "a-", "a--b", "A", "a b", "a\x00", "é", "x" * 121])
def test_is_slug_refuses_what_slugify_never_makes(text: str) -> None:
    assert not is_slug(text)
