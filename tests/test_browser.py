"""The reader site in Debian's headless Chromium (Playwright) against a real `workshop serve`."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import IN_CI, LiveServer, add_post
from sqlalchemy import Engine

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
WIDTHS = {"phone": (390, 844), "desktop": (1280, 900)}

if not (os.path.exists(CHROMIUM) and shutil.which(CHROMIUM)):
    if IN_CI:
        raise RuntimeError(f"{CHROMIUM} is required under CI=true")
    pytest.skip(f"{CHROMIUM} is not installed (apt install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

RICH_BODY = """I need to be direct: the *breadth* of this move matters more than its size.

> Flow: the outflows are real, and they are concentrated in the largest names.

# Where the outflows went

| Ticker | Move | Volume vs 20d | Implied volatility | Open interest | Note |
|---|---:|---:|---:|---:|---|
| QQQ | -2.4% | 1.8x | 21.3 | 1,204,553 | broadest decline since the winter |
| TSLA | -5.1% | 2.6x | 58.9 | 3,118,002 | led the tape lower all session long |

A very long link: https://example.com/a/really/long/path/that/keeps/going/and/going/without/any/break/at/all/whatsoever

Supercalifragilisticexpialidocioussupercalifragilisticexpialidocious words must wrap too.

```
def conviction(minds): return sum(m.confidence for m in minds) / len(minds)  # a long line of code
```

Contrarian disagreed, as usual.[^1] Flow noted it, again.[^1]

[^1]: Contrarian has disagreed in most cycles this month.
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def open_page(browser: Browser, width: str, url: str) -> Page:
    w, h = WIDTHS[width]
    page = browser.new_page(viewport={"width": w, "height": h})
    response = page.goto(url)
    assert response is not None and response.status == 200, url
    return page


def no_horizontal_scroll(page: Page) -> bool:
    return bool(
        page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    )


@pytest.fixture
def site(engine: Engine, live_server: LiveServer) -> dict[str, str]:
    add_post(
        engine,
        cycle=801,
        title="Rates Stay Put While Credit Wobbles",
        published_at="2026-04-01T16:00:00Z",
        stories=[{"title": "Mega-Cap Tech Synchronized Decline", "status": "developing"}],
    )
    essay = add_post(
        engine,
        cycle=803,
        title="The Selloff Is Real, But It's Not a Regime Signal Yet",
        published_at="2026-04-03T17:51:27Z",
        body=RICH_BODY,
        debate={
            "outcome": "unknown",
            "conviction": 0.37,
            "minds": [
                {"name": "Macro", "confidence": 0.25},
                {"name": "Flow", "confidence": 0.5},
                {"name": "Contrarian", "confidence": 0.3},
                {"name": "Volatility", "confidence": 0.65},
            ],
        },
        tags=["TSLA", "META", "QQQ", "rotation"],
        stories=[{"title": "Mega-Cap Tech Synchronized Decline", "status": "accelerating"}],
    )
    add_post(
        engine,
        cycle=805,
        title="No Debate Today",
        published_at="2026-04-04T16:00:00Z",
        debate=None,
        stories=[{"title": "Mega-Cap Tech Synchronized Decline", "status": "partially reversing"}],
    )
    return {
        "home": live_server.url + "/",
        "essay": f"{live_server.url}/read/{essay.id}/{essay.slug}",
        "story": live_server.url + "/stories/mega-cap-tech-synchronized-decline",
        "search": live_server.url + "/search?q=breadth",
    }


@pytest.mark.parametrize("width", WIDTHS)
def test_pages_fit_and_screenshots(browser: Browser, site: dict[str, str], width: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, url in site.items():
        page = open_page(browser, width, url)
        assert no_horizontal_scroll(page), f"{name} scrolls sideways at {width}"
        page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
        if name == "essay":
            panel = page.locator("section.debate")
            assert panel.is_visible()
            assert panel.locator("li.mind").count() == 4
            assert panel.locator("li.mind").nth(3).inner_text().split()[0] == "Volatility"
            bar = panel.locator("li.mind .bar > span").first.bounding_box()
            assert bar is not None and bar["width"] > 0
            # The notes' heading is seen (the debate's is for screen readers alone), and a
            # note cited twice has links back a sighted reader can tell apart: "↩︎ a b".
            title = page.locator("section.footnotes > h2").bounding_box()
            assert title is not None and title["height"] > 8
            backs = page.locator("#fn1 a.footnote-backref").all_inner_texts()
            assert len(backs) == len(set(backs)) == 2
        page.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_missing_essays_page_reads_plainly_and_leads_on(
    browser: Browser, site: dict[str, str], live_server: LiveServer, width: str
) -> None:
    """A permalink with a mistyped number, as a reader sees it: plain words (it showed "Error
    404" above them), no sideways scroll, and a search box holding the link's words that finds
    the essay in one click."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    w, h = WIDTHS[width]
    page = browser.new_page(viewport={"width": w, "height": h})
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text))
    slug = site["essay"].rsplit("/", 1)[1]
    response = page.goto(f"{live_server.url}/read/99999/{slug}")
    assert response is not None and response.status == 404
    assert no_horizontal_scroll(page)
    page.screenshot(path=str(SHOTS / f"error-404-{width}.png"), full_page=True)
    seen = page.locator("main").inner_text()
    assert seen.split("\n")[0] == "This essay doesn’t exist"
    assert "404" not in seen and "error" not in seen.lower()
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/search?q=*")
    found = page.get_by_role("link", name="The Selloff Is Real, But It's Not a Regime Signal Yet")
    assert found.get_attribute("href") == site["essay"].removeprefix(live_server.url)
    assert not [text for text in refused if "Content Security Policy" in text], refused
    page.close()


def test_dark_theme_follows_the_system(browser: Browser, site: dict[str, str]) -> None:
    context = browser.new_context(color_scheme="dark", viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.goto(site["essay"])
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(21, 20, 18)"
    page.screenshot(path=str(SHOTS / "essay-phone-dark.png"), full_page=True)
    context.close()


HOSTILE_TITLE = (
    '</title><script>document.title="pwned";alert(1)</script><img src=x onerror=alert(2)>'
)
HOSTILE_BODY = """<script>alert(3)</script>

<img src=x onerror="alert(4)"> [click](javascript:alert(5))

[data](data:text/html,<script>alert(6)</script>)

<a href="javascript:alert(7)">raw</a> <svg onload=alert(8)>
"""


def test_hostile_essay_runs_no_script(
    browser: Browser, engine: Engine, live_server: LiveServer
) -> None:
    post = add_post(
        engine,
        title=HOSTILE_TITLE,
        body=HOSTILE_BODY,
        tags=["<script>alert(9)</script>"],
        stories=[{"title": '"><script>alert(10)</script>', "status": "<b>x</b>"}],
    )
    dialogs: list[str] = []
    for url in (
        f"{live_server.url}/read/{post.id}/{post.slug}",
        f"{live_server.url}/",
        f"{live_server.url}/search?q=script+alert",
        f"{live_server.url}/tags/script-alert-9-script",
    ):
        page = browser.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        page.wait_for_load_state("load")
        assert page.title() != "pwned"
        if "/read/" in url:
            assert page.title() == f"{HOSTILE_TITLE} — Workshop"
            assert page.locator("h1").inner_text() == HOSTILE_TITLE
        for link in page.locator("a").all():
            assert (
                not (link.get_attribute("href") or "").lower().startswith(("javascript:", "data:"))
            )
        page.close()
    assert dialogs == []


# What Chromium gives a screen reader: every node of the accessibility tree it exposes.
def accessibility_tree(page: Page) -> list[dict[str, Any]]:
    cdp = page.context.new_cdp_session(page)
    nodes: list[dict[str, Any]] = cdp.send("Accessibility.getFullAXTree")["nodes"]
    cdp.detach()
    return [n for n in nodes if not n.get("ignored")]


def test_keyboard_reaches_every_link_and_screen_readers_can_tell_them_apart(
    browser: Browser, site: dict[str, str]
) -> None:
    """Every link is a tab stop with a visible focus ring and a name that says something (the
    footnotes' "↩︎" did not); the title is the one h1 and the body's headings sit below it."""
    page = open_page(browser, "desktop", site["essay"])
    links = page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    reached: list[str] = []
    for _ in range(len(links) + 5):
        page.keyboard.press("Tab")
        info = page.evaluate(
            "(() => { const a = document.activeElement; if (!a || a.tagName !== 'A') return null;"
            " const s = getComputedStyle(a); return [a.href, s.outlineStyle, s.outlineWidth]; })()"
        )
        if info:
            reached.append(info[0])
            assert info[1] != "none" and info[2] != "0px", f"no visible focus on {info[0]}"
    assert set(links) <= set(reached)
    tree = accessibility_tree(page)
    names = [str(n.get("name", {}).get("value", "")) for n in tree if n["role"]["value"] == "link"]
    assert len(names) == len(links)
    assert [name for name in names if not any(c.isalnum() for c in name)] == []
    backs = {f"Back to reference 1 (occurrence {letter})" for letter in "ab"}
    assert {"Footnote 1", *backs} <= set(names)
    headings = [
        (
            next(prop["value"]["value"] for prop in n["properties"] if prop["name"] == "level"),
            n["name"]["value"],
        )
        for n in tree
        if n["role"]["value"] == "heading"
    ]
    assert [name for level, name in headings if level == 1] == [
        "The Selloff Is Real, But It's Not a Regime Signal Yet"
    ]
    assert (2, "Where the outflows went") in headings
    page.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_titles_and_tags_without_a_break_still_fit(
    browser: Browser, engine: Engine, live_server: LiveServer, width: str
) -> None:
    """A grid column never shrinks below its longest word unless told to: a title such as
    the one below pushed the essay's next-essay box and an archive month 50-350 px past a
    phone's edge."""
    older = add_post(engine, cycle=810, published_at="2026-04-06T16:00:00Z", title="Before")
    add_post(
        engine,
        cycle=811,
        published_at="2026-04-07T16:00:00Z",
        title="TSLA/META/GOOGL/AMZN/NVDA/MSFT/AAPL/AVGO/ORCL/NFLX/AMD All Fell Together",
        tags=["mega-cap-technology-synchronized-decline-across-every-sector-etf"],
    )
    pages = {
        "essay": f"{live_server.url}/read/{older.id}/{older.slug}",
        "newer essay": f"{live_server.url}/read/{older.id + 1}",
        "month": f"{live_server.url}/archive/2026/04",
        "home": f"{live_server.url}/",
    }
    for name, url in pages.items():
        page = open_page(browser, width, url)
        assert no_horizontal_scroll(page), f"{name} scrolls sideways at {width}"
        page.close()


def test_pages_break_no_rule_of_their_security_policy(
    browser: Browser, site: dict[str, str]
) -> None:
    """The policy allows what the pages use (the stylesheet, the meters' style attributes) and
    nothing else: Chromium reports no violation, and the meters still have their widths."""
    for name, url in site.items():
        page = browser.new_page(viewport={"width": 390, "height": 844})
        refused: list[str] = []
        page.on("console", lambda message, seen=refused: seen.append(message.text))
        response = page.goto(url)
        assert response is not None and "content-security-policy" in response.headers, name
        assert not [text for text in refused if "Content Security Policy" in text], refused
        if name == "essay":
            bar = page.locator("section.debate li.mind .bar > span").first.bounding_box()
            assert bar is not None and bar["width"] > 0
        page.close()


# Every element of the main content that scrolls sideways: it must be a keyboard stop.
SIDEWAYS_SCROLLERS = """() => [...document.querySelectorAll('main *')]
  .filter(e => ['auto', 'scroll'].includes(getComputedStyle(e).overflowX)
               && e.scrollWidth > e.clientWidth)
  .map(e => ({tag: e.localName, role: e.getAttribute('role'),
              name: e.getAttribute('aria-label'), tabindex: e.getAttribute('tabindex')}))"""


def test_what_scrolls_sideways_is_a_named_tab_stop(browser: Browser, site: dict[str, str]) -> None:
    """WCAG 2.1.1: a box that scrolls must be reachable by keyboard in every browser (Chromium
    focuses a scroller by itself, Safari does not). At the 320 px of WCAG's reflow rule the
    essay's table scrolls in a region with a name and a tab stop; its long code line wraps."""
    page = browser.new_page(viewport={"width": 320, "height": 640}, reduced_motion="reduce")
    page.goto(site["essay"])
    assert no_horizontal_scroll(page)
    assert page.evaluate(SIDEWAYS_SCROLLERS) == [
        {"tag": "div", "role": "region", "name": "Table 1", "tabindex": "0"}
    ]
    region = page.get_by_role("region", name="Table 1")
    assert region.locator("> table").count() == 1
    for _ in range(len(page.locator("a[href]").all()) + 5):
        page.keyboard.press("Tab")
        if region.evaluate("e => e === document.activeElement"):
            break
    outline = region.evaluate(
        "e => [getComputedStyle(e).outlineStyle, getComputedStyle(e).outlineWidth]"
    )
    assert outline[0] != "none" and outline[1] != "0px", "the focused table shows no focus ring"
    page.keyboard.press("ArrowRight")  # scrolls the focused box, not the page
    page.wait_for_function("() => document.activeElement.scrollLeft > 0")
    assert no_horizontal_scroll(page)
    page.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_confidence_bars_show_in_forced_colours(
    browser: Browser, site: dict[str, str], scheme: Literal["light", "dark"]
) -> None:
    """A Windows contrast theme replaces background colours: the bars must not vanish into
    their track (the percentages beside them stay the text that screen readers read)."""
    context = browser.new_context(
        forced_colors="active", color_scheme=scheme, viewport={"width": 390, "height": 844}
    )
    page = context.new_page()
    page.goto(site["essay"])
    for bar in page.locator("section.debate .bar:has(> span)").all():
        fill, track = bar.evaluate(
            "e => [getComputedStyle(e.firstElementChild).backgroundColor,"
            " getComputedStyle(e).backgroundColor]"
        )
        assert fill != track, (fill, track)
        assert bar.evaluate("e => getComputedStyle(e).borderTopStyle") != "none"
    page.screenshot(path=str(SHOTS / f"essay-phone-forced-colors-{scheme}.png"))
    context.close()
