"""Markdown -> safe HTML. Raw HTML is off and only harmless link schemes pass."""

import re
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.footnote import footnote_plugin

# Anything not on this list (javascript:, vbscript:, data:, file:, ...) is refused.
# markdown-it normalises the URL (entity and percent decoding) before this check runs.
_SAFE_SCHEME = re.compile(r"^(?:https?:|mailto:|#|/|\./|\.\./|[^:/?#]*(?:[/?#]|$))", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x20\x7f]+")


def is_safe_url(url: str) -> bool:
    # Browsers ignore whitespace and control characters inside a scheme ("java\tscript:").
    return bool(_SAFE_SCHEME.match(_CONTROL.sub("", url)))


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    md = (
        MarkdownIt("commonmark", {"html": False, "typographer": True, "linkify": False})
        .enable(["table", "strikethrough", "replacements", "smartquotes"])
        .use(footnote_plugin)
    )
    md.validateLink = is_safe_url  # type: ignore[method-assign]
    return md


def render_markdown(text: str) -> str:
    return _markdown().render(text)


def render_with_excerpt(text: str, limit: int = 280) -> tuple[str, str]:
    """`render_markdown(text)` and `excerpt(text)` from one parse (the write path needs both)."""
    md = _markdown()
    env: dict[str, Any] = {}
    tokens = md.parse(text, env)
    summary = _excerpt(tokens, limit)  # before rendering: the renderer may touch the tokens
    return md.renderer.render(tokens, md.options, env), summary


def excerpt(text: str, limit: int = 280) -> str:
    """Plain text of the first paragraphs (headings skipped), cut at a word boundary."""
    return _excerpt(_markdown().parse(text), limit)


def _excerpt(tokens: list[Token], limit: int) -> str:
    paragraphs: list[str] = []
    length = 0
    skipping = 0  # inside a heading or a table: not prose a reader wants in a summary
    for token in tokens:
        if token.type in ("heading_open", "table_open"):
            skipping += 1
        elif token.type in ("heading_close", "table_close"):
            skipping -= 1
        if skipping or token.type != "inline" or not token.children:
            continue
        parts = [
            child.content if child.type in ("text", "code_inline") else " "
            for child in token.children
            if child.type in ("text", "code_inline", "softbreak", "hardbreak")
        ]
        paragraphs.append(" ".join("".join(parts).split()))
        length += len(paragraphs[-1])
        if length > limit:
            break
    plain = " ".join(p for p in paragraphs if p)
    if len(plain) <= limit:
        return plain
    return plain[:limit].rsplit(" ", 1)[0] + "…"
