r"""The blog's export format (one essay per text file), parsed and written.

    # <title>
    *<author> · <YYYY-MM-DD HH:MM:SS in UTC>*
    **Cycle <n> | <Month D, YYYY — H:MM AM/PM in site time>**
    <body ...>
    ---
    *Debate: <outcome> | Conviction: <p>% | <Mind>: <p>% ...*
    *Tags: <tag>, <tag>*                                  (Workshop's addition, optional)
    *Stories: <title> (<status>); <title> (<status>)*     (Workshop's addition, optional)
    *Deleted: <YYYY-MM-DD HH:MM:SS in UTC>*               (Workshop's addition, optional)
    ---
    Permanent link: <url ending in /read/<id>/<slug>>

The cycle line, the footer and the permanent link may be missing; the body may contain `---`.
Tags and stories are not in the old blog's files; Workshop writes them in the footer so that
export -> import keeps the whole site. So is the Deleted line: a withdrawn essay is exported too,
with its last content and the time it was withdrawn, so that after import its id still answers
410 and is never given to another essay. Such a file needs its permanent link (the id it keeps).

In the footer, a character that would end a name early (`|` `,` `;` `(` `)`) is written after a
backslash, as Markdown escapes it, and so is a backslash itself: a tag `rates, duration` is
`rates\, duration`. A mind named Conviction is written `\Conviction`, as the bare word is the
debate's conviction. The old blog's files have no backslashes there and read as before.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from app.models import PostIn
from app.timefmt import cycle_line

_AUTHOR_LINE = re.compile(r"^\*(?P<author>.+) · (?P<when>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\*$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_CYCLE_LINE = re.compile(r"^\*\*Cycle (?P<cycle>\d+) \| (?P<local>.+)\*\*$")
_PERMALINK = re.compile(r"^Permanent link: (?P<url>\S*/read/(?P<id>\d+)(?:/[^/\s]*)?/?)$")
_META_LINE = re.compile(r"^\*(?P<key>Debate|Tags|Stories|Deleted): (?P<value>.*)\*$")
_PERCENT = re.compile(r"^(?P<num>\d+(?:\.\d+)?)%$")
_STORY = re.compile(r"^(?P<title>.+) \((?P<status>(?:\\.|[^()\\])+)\)$")
_ESCAPED = re.compile(r"\\(.)")
_TO_ESCAPE = re.compile(r"([\\|,;()])")
MAX_ID = 2**31 - 1  # the posts table's integer key, on both databases


class FormatError(ValueError):
    """A malformed export file; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass
class ExportedPost:
    post: PostIn
    post_id: int | None
    deleted_at: datetime | None = None  # set: the essay was withdrawn then (page 410)


def parse(text: str) -> ExportedPost:
    lines = text.replace("\r\n", "\n").split("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines)]
    # Header: title, author line, optional cycle line (blank lines between are allowed).
    content = [(n, line) for n, line in numbered if line.strip()]
    if not content:
        raise FormatError(1, "the file is empty")
    n, first = content[0]
    if not first.startswith("# ") or not first[2:].strip():
        raise FormatError(n, "expected the title line '# <title>'")
    title = first[2:].strip()
    if len(content) < 2:
        raise FormatError(n + 1, "expected the author line '*<author> · <YYYY-MM-DD HH:MM:SS>*'")
    n, second = content[1]
    match = _AUTHOR_LINE.match(second.strip())
    if not match:
        raise FormatError(n, "expected the author line '*<author> · <YYYY-MM-DD HH:MM:SS>*'")
    author = match["author"].strip()
    published_at = _instant(match["when"], n)
    body_start = n  # index into `lines` of the line after the author line
    cycle: int | None = None
    if len(content) > 2 and (cm := _CYCLE_LINE.match(content[2][1].strip())):
        cycle = int(cm["cycle"])
        body_start = content[2][0]

    # Footer, read from the end: permanent link, then the metadata block, each after a `---`.
    end = len(lines)
    while end > body_start and not lines[end - 1].strip():
        end -= 1
    post_id = None
    footer: dict[str, tuple[int, str]] = {}
    if end > body_start and (pm := _PERMALINK.match(lines[end - 1].strip())):
        post_id = int(pm["id"])
        if not 1 <= post_id <= MAX_ID:
            raise FormatError(end, f"the permanent link's id must be 1 to {MAX_ID}, not {post_id}")
        end = _drop_rule(lines, end - 1, body_start)
    elif end > body_start and lines[end - 1].startswith("Permanent link:"):
        raise FormatError(end, "the permanent link must end in /read/<id>/<slug>")
    meta_end = end
    while end > body_start and not lines[end - 1].strip():
        end -= 1
    while end > body_start and (mm := _META_LINE.match(lines[end - 1].strip())):
        if mm["key"] in footer:
            raise FormatError(end, f"two {mm['key']} lines")
        footer[mm["key"]] = (end, mm["value"])
        end -= 1
    if footer:
        end = _drop_rule(lines, end, body_start)
    elif meta_end != end:
        end = meta_end
    body = "\n".join(lines[body_start:end]).strip("\n")
    if not body.strip():
        raise FormatError(body_start + 1, "the essay has no body")

    doc: dict[str, object] = {
        "title": title,
        "body": body,
        "author": author,
        "published_at": published_at,
        "cycle": cycle,
    }
    if "Debate" in footer:
        doc["debate"] = _parse_debate(*footer["Debate"])
    if "Tags" in footer:
        tags = _split(footer["Tags"][1], ",")
        doc["tags"] = [_unescape(t.strip()) for t in tags if t.strip()]
    if "Stories" in footer:
        doc["stories"] = _parse_stories(*footer["Stories"])
    deleted_at = None
    if "Deleted" in footer:
        line, value = footer["Deleted"]
        if not _TIME.match(value):
            raise FormatError(line, f"Deleted: expected <YYYY-MM-DD HH:MM:SS>, got {value!r}")
        deleted_at = _instant(value, line)
        if post_id is None:
            raise FormatError(line, "a deleted essay needs its permanent link (the id it keeps)")
    try:
        post = PostIn.model_validate(doc)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "essay"
        line = _line_of_field(field.split(".")[0], footer, n)
        raise FormatError(line, f"{field}: {error['msg']}") from None
    return ExportedPost(post, post_id, deleted_at)


def _instant(text: str, line: int) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        raise FormatError(line, f"invalid date and time {text!r}") from None


def _drop_rule(lines: list[str], end: int, start: int) -> int:
    """Step back over blank lines and one `---` rule above line index `end`."""
    i = end
    while i > start and not lines[i - 1].strip():
        i -= 1
    if i > start and lines[i - 1].strip() == "---":
        return i - 1
    return end


def _line_of_field(field: str, footer: dict[str, tuple[int, str]], author_line: int) -> int:
    key = {"debate": "Debate", "tags": "Tags", "stories": "Stories"}.get(field)
    if key and key in footer:
        return footer[key][0]
    return 1 if field == "title" else author_line


def _percent(text: str, line: int, what: str) -> float:
    match = _PERCENT.match(text.strip())
    if not match:
        raise FormatError(line, f"{what}: expected a percentage like 37%, got {text.strip()!r}")
    try:
        return float(Decimal(match["num"]) / 100)
    except InvalidOperation:
        raise FormatError(line, f"{what}: invalid number {text!r}") from None


def _split(text: str, separator: str) -> list[str]:
    """`text` cut at each `separator` that is not part of a backslash escape."""
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text.startswith(separator, i):
            parts.append(text[start:i])
            i = start = i + len(separator)
        else:
            i += 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    return _ESCAPED.sub(r"\1", text)


def _escape(text: str) -> str:
    return _TO_ESCAPE.sub(r"\\\1", text)


def _parse_debate(line: int, value: str) -> dict[str, object]:
    parts = [p.strip() for p in _split(value, " | ")]
    debate: dict[str, object] = {"outcome": _unescape(parts[0]), "minds": []}
    for part in parts[1:]:
        raw, sep, amount = part.rpartition(":")
        if not sep or not raw.strip():
            raise FormatError(line, f"expected '<Mind>: <p>%', got {part!r}")
        raw = raw.strip()
        if raw == "Conviction":  # written `\Conviction` when it is a mind's name
            debate["conviction"] = _percent(amount, line, "Conviction")
        else:
            name = _unescape(raw)
            debate["minds"].append({"name": name, "confidence": _percent(amount, line, name)})  # type: ignore[attr-defined]
    return debate


def _parse_stories(line: int, value: str) -> list[dict[str, str]]:
    stories = []
    for part in _split(value, "; "):
        match = _STORY.match(part.strip())
        if not match:
            raise FormatError(line, f"expected '<story> (<status>)', got {part.strip()!r}")
        title, status = _unescape(match["title"].strip()), _unescape(match["status"].strip())
        stories.append({"title": title, "status": status})
    return stories


def _format_percent(value: float) -> str:
    text = f"{Decimal(repr(value)) * 100:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"


def render(
    post: PostIn, *, permalink: str | None, tz: ZoneInfo, deleted_at: datetime | None = None
) -> str:
    """The inverse of parse(): the same text the old blog exported, plus tags and stories, and
    for a withdrawn essay (`deleted_at`) the time it was withdrawn."""
    assert post.published_at is not None
    out = [f"# {post.title}", "", f"*{post.author} · {post.published_at:%Y-%m-%d %H:%M:%S}*", ""]
    if post.cycle is not None:
        out += [f"**{cycle_line(post.cycle, post.published_at, tz)}**", ""]
    out += [post.body, ""]
    meta = []
    if post.debate is not None:
        parts = [_escape(post.debate.outcome)]
        if post.debate.conviction is not None:
            parts.append(f"Conviction: {_format_percent(post.debate.conviction)}")
        for m in post.debate.minds:
            name = "\\Conviction" if m.name == "Conviction" else _escape(m.name)
            parts.append(f"{name}: {_format_percent(m.confidence)}")
        meta.append(f"*Debate: {' | '.join(parts)}*")
    if post.tags:
        meta.append(f"*Tags: {', '.join(_escape(t) for t in post.tags)}*")
    if post.stories:
        stories = (f"{_escape(s.title)} ({_escape(s.status)})" for s in post.stories)
        meta.append(f"*Stories: {'; '.join(stories)}*")
    if deleted_at is not None:
        meta.append(f"*Deleted: {deleted_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}*")
    if meta:
        out += ["---", *meta, ""]
    if permalink:
        out += ["---", f"Permanent link: {permalink}", ""]
    return "\n".join(out)
