"""The essay page's post-only HTML, rendered once at write time and stored in `posts.page_html`.

Everything on an essay page that depends only on the post and the site settings (the head
metadata, the header, the debate summary, the prose, the stories and tags) is rendered when the
post is written; a request then joins the stored parts with what depends on the neighbours (the
previous/next links and the minds absent from this debate). The stored text starts with a key of
the build (templates and static files) and the settings it used: a deploy that changes the
design, or another site name or timezone, does not match the key, and the page renders the
fragment live instead (correct, only slower) until the post is written again. The site URL is
not in the key: the fragment holds a placeholder that the page replaces (so an archive built
offline, or served under a new address, keeps its stored HTML).
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from app.config import Settings
from app.templating import json_script, make_templates

if TYPE_CHECKING:
    from app.posts import PostView

HEAD_MARK = "<!--workshop:head-->"
SITE_URL = "https://site-url.workshop.invalid"  # stands for settings.site_url in stored HTML
MINDS_MARK = "<!--workshop:minds-->"
TEMPLATE = "_post_fragment.html"
PAGE_TEMPLATE = "post.html"

Render = Callable[["PostView"], str]
_RENDERERS: dict[tuple[str, ...], "Renderer"] = {}


@dataclass(frozen=True, slots=True)
class Parts:
    head: Markup
    before: Markup
    after: Markup
    debate: bool  # the debate section is there: the minds go between `before` and `after`


def key_of(templates: Jinja2Templates) -> str:
    """What the stored HTML depends on besides the post: the build and the settings it shows."""
    env = templates.env
    settings: Settings = env.globals["settings"]  # type: ignore[assignment]
    parts = (  # every setting the page templates show, except the site URL (a placeholder)
        str(env.globals["build_fingerprint"]),
        settings.site_name,
        settings.site_description,
        str(settings.tz),
    )
    return "<!--fragment:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16] + "-->"


class Renderer:
    """Renders the stored fragment of a post; one per process and settings."""

    def __init__(self, templates: Jinja2Templates) -> None:
        self.templates = templates
        self.key = key_of(templates)
        self._template = templates.env.get_template(TEMPLATE)
        self._page = templates.env.get_template(PAGE_TEMPLATE)
        settings: Settings = templates.env.globals["settings"]  # type: ignore[assignment]
        self._settings = settings.model_copy(update={"site_url": SITE_URL})
        # The site URL as it appears inside HTML attributes and the JSON-LD script alike.
        self._site_url = str(json_script(settings.site_url))[1:-1]
        # Stored essay pages (`essay_pages`) are finished, site URL and all, so they start with
        # a key that names the site as well: a page stored for another address renders live.
        site = hashlib.sha256(f"{self.key}\n{settings.site_url}".encode()).hexdigest()[:16]
        self.page_key = f"<!--page:{site}-->"

    @classmethod
    def for_settings(cls, settings: Settings) -> "Renderer":
        """One renderer per process and site (the CLI, imports and bulk builds reuse it)."""
        wanted = (settings.site_url, settings.site_name, str(settings.tz), settings.author)
        if wanted not in _RENDERERS:
            _RENDERERS[wanted] = cls(make_templates(settings))
        return _RENDERERS[wanted]

    def __call__(self, view: "PostView") -> str:
        return self.key + self._template.render(post=view.post, view=view, settings=self._settings)

    def parts(self, stored: str | None, live: Callable[[], "PostView"]) -> Parts:
        """The stored fragment split for the page (the site URL still a placeholder), or one
        rendered now when it is missing or was rendered by another build or other settings."""
        if stored is None or not stored.startswith(self.key):
            stored = self(live())
        head, _, article = stored[len(self.key) :].partition(HEAD_MARK)
        before, found, after = article.partition(MINDS_MARK)
        return Parts(Markup(head), Markup(before), Markup(after), bool(found))

    def page(self, **context: object) -> str:
        """The whole essay page (`post.html`), the site URL still a placeholder: the same text
        whether it is stored (`essay_pages`) or rendered for one request."""
        return self._page.render(settings=self._settings, request=None, **context)

    def finish(self, page: str) -> str:
        """A page as served: the placeholder replaced by this site's URL."""
        return page.replace(SITE_URL, self._site_url)
