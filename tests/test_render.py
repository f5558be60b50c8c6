import lxml.html
import pytest
from htmlcheck import executable_parts, tags

from app.render import excerpt, is_safe_url, render_markdown
from app.templating import prose

HOSTILE_BODIES = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    '<img src=x onerror="alert(1)">',
    "<iframe src=javascript:alert(1)></iframe>",
    '<a href="javascript:alert(1)">x</a>',
    "[click](javascript:alert(1))",
    "[click](JAVASCRIPT:alert(1))",
    "[click]( javascript:alert(1) )",
    "[click](java&#x09;script:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](&#x6A;avascript:alert(1))",
    "[click](javascript&colon;alert(1))",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![img](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
    "![img](javascript:alert(1))",
    "[ref][1]\n\n[1]: javascript:alert(1)",
    "<javascript:alert(1)>",
    "<svg onload=alert(1)>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    "[a](file:///etc/passwd)",
    "`<script>alert(1)</script>`",
    "```html\n<script>alert(1)</script>\n```",
    "> <img src=x onerror=alert(1)>",
    "| a | b |\n|---|---|\n| <script>x</script> | [y](javascript:z) |",
    "x[^1]\n\n[^1]: <script>alert(1)</script> [z](javascript:alert(1))",
    '<a href="https://ok.example" onclick="alert(1)">x</a>',
    "<!-- <script>alert(1)</script> -->",
    "<style>body{display:none}</style>",
    '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_nothing_executable_survives(body: str) -> None:
    html = render_markdown(body)
    assert executable_parts(html) == [], html
    assert executable_parts(prose(html)) == [], prose(html)  # as the essay page shows it


def test_commonmark_extensions() -> None:
    html = render_markdown(
        'A "quote" -- and ~~struck~~.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n'
        "Note[^n].\n\n[^n]: Footnote."
    )
    found = set(tags(html))
    assert {"table", "thead", "td", "s", "sup", "section"} <= found
    assert "“quote”" in html and "–" in html


# Text an author writes that looks like the tags the essay page changes (`templating.prose`):
# raw HTML is off, so none of it is a tag, and the page leaves all of it as it is.
LOOKALIKES = [
    "`<h1>code</h1>` and <h2>raw</h2> and &lt;h3&gt;",
    "```\n<h1>in a block</h1>\n```",
    "[[1]](#fn1) and [[1:1]](#fn1)",
    "[\u21a9\ufe0e](#fnref1) and [\u21a9\ufe0e](#fnref1:1)",
    '<a href="#fn1" id="fnref1">[1]</a> <a href="#fnref1" class="footnote-backref">x</a>',
    '<section class="footnotes">\n<h2 id="footnotes-title">Notes</h2>',
    '`<section class="footnotes">`',
]


@pytest.mark.parametrize("body", LOOKALIKES)
def test_the_page_leaves_what_an_author_wrote(body: str) -> None:
    html = render_markdown(body)
    assert prose(html) == html


def test_the_page_names_only_the_renderers_footnote_links() -> None:
    html = render_markdown("See [[1]](#fn1).[^1]\n\n[^1]: Or [\u21a9\ufe0e](#fnref1).")
    doc = lxml.html.fragment_fromstring(prose(html), create_parent="div")
    names = [(a.text_content(), a.get("aria-label")) for a in doc.iter("a")]
    assert names == [
        ("[1]", None),
        ("[1]", "Footnote 1"),
        ("\u21a9\ufe0e", None),
        ("\u21a9\ufe0e", "Back to reference 1"),
    ]


def test_a_note_cited_past_z_has_a_letter_for_each_reference() -> None:
    text = " ".join(["Flow.[^flow]"] * 28) + "\n\n[^flow]: Five days running."
    doc = lxml.html.fragment_fromstring(prose(render_markdown(text)), create_parent="div")
    backs = doc.xpath("//a[@class='footnote-backref']")
    assert [a.text_content() for a in backs] == [*"abcdefghijklmnopqrstuvwxyz", "aa", "ab"]
    assert backs[-1].get("aria-label") == "Back to reference 1 (occurrence ab)"
    assert [a.get("href") for a in backs] == ["#fnref1"] + [f"#fnref1:{n}" for n in range(1, 28)]


def test_safe_links_are_kept() -> None:
    html = render_markdown(
        "[a](https://example.com/x?y=1) [b](/read/1/x) [c](#fn) [d](mailto:a@b.c)"
    )
    assert tags(html).count("a") == 4


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("https://example.com", True),
        ("/read/1/x", True),
        ("relative/path", True),
        ("#anchor", True),
        ("javascript:alert(1)", False),
        ("java\tscript:alert(1)", False),
        (" JavaScript:alert(1)", False),
        ("data:text/html,x", False),
        ("vbscript:x", False),
    ],
)
def test_url_policy(url: str, safe: bool) -> None:
    assert is_safe_url(url) is safe


def test_excerpt_skips_headings_and_markup() -> None:
    text = "# Heading\n\nSome *emphasis* and `code`.\n\n" + "word " * 200
    result = excerpt(text, limit=100)
    assert result.startswith("Some emphasis and code.")
    assert len(result) <= 101 and result.endswith("…")
