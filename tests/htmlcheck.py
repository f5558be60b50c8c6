"""Parse HTML and list anything executable: the check behind every hostile-input test."""

import re
from html.parser import HTMLParser

UNSAFE_SCHEME = re.compile(r"^\s*(javascript|vbscript|data|file):", re.IGNORECASE)
URL_ATTRS = {"href", "src", "action", "formaction", "xlink:href", "poster", "srcset", "background"}
EXECUTABLE_TAGS = {
    "script",
    "iframe",
    "object",
    "embed",
    "form",
    "base",
    "meta",
    "link",
    "style",
    "svg",
    "math",
}


class _Collector(HTMLParser):
    def __init__(self, allowed_tags: set[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.allowed = allowed_tags
        self.problems: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in EXECUTABLE_TAGS and tag not in self.allowed:
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")
            if (
                name in URL_ATTRS
                and value
                and UNSAFE_SCHEME.match(re.sub(r"[\x00-\x20]", "", value))
            ):
                self.problems.append(f"<{tag} {name}={value!r}>")


def executable_parts(html: str, allowed_tags: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    collector = _Collector(set(allowed_tags))
    collector.feed(html)
    collector.close()
    return collector.problems


def tags(html: str) -> list[str]:
    collector = _Collector(set())
    collector.feed(html)
    return collector.tags
