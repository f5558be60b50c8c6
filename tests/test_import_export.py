"""The blog's export format: parse, import (idempotent, line-numbered refusals), round trip."""

import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session

from app import exportfmt, posts, transfer
from app.config import Settings
from app.exportfmt import FormatError, parse

DATA = Path(__file__).parent / "data"

ESSAY = """# Breadth Is Thinning Under a Calm Index

*Workshop · 2026-04-05 15:04:00*

**Cycle 900 | April 5, 2026 — 8:04 AM**

Flow saw money leave the small names while the index held.

---

Macro disagreed, and the rule above is part of the body.

---
*Debate: split | Conviction: 42% | Macro: 35% | Flow: 60% | Contrarian: 30%*
*Tags: QQQ, breadth*
*Stories: Narrow Leadership (developing)*

---
Permanent link: https://old.example/read/4242/breadth-is-thinning-under-a-calm-index
"""


# The same essay, withdrawn: Workshop's export of a deleted essay.
DELETED = ESSAY.replace(
    "*Stories: Narrow Leadership (developing)*\n",
    "*Stories: Narrow Leadership (developing)*\n*Deleted: 2026-04-06 09:30:00*\n",
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_parse_full_essay() -> None:
    parsed = parse(ESSAY)
    post = parsed.post
    assert parsed.post_id == 4242
    assert post.title == "Breadth Is Thinning Under a Calm Index"
    assert post.cycle == 900 and post.author == "Workshop"
    assert (
        post.published_at is not None
        and post.published_at.isoformat() == "2026-04-05T15:04:00+00:00"
    )
    assert post.body.count("---") == 1 and post.body.endswith("part of the body.")
    assert post.debate is not None
    assert (post.debate.outcome, post.debate.conviction) == ("split", 0.42)
    assert [(m.name, m.confidence) for m in post.debate.minds] == [
        ("Macro", 0.35),
        ("Flow", 0.6),
        ("Contrarian", 0.3),
    ]
    assert post.tags == ["QQQ", "breadth"]
    assert [(s.title, s.status) for s in post.stories] == [("Narrow Leadership", "developing")]


def test_parse_minimal_essay_keeps_rule_in_body() -> None:
    parsed = parse((DATA / "essay-minimal.txt").read_text())
    assert parsed.post_id is None and parsed.post.cycle is None and parsed.post.debate is None
    assert "---" in parsed.post.body


def test_render_is_the_inverse_of_parse(settings: Settings) -> None:
    parsed = parse(ESSAY)
    link = "https://old.example/read/4242/breadth-is-thinning-under-a-calm-index"
    assert parsed.deleted_at is None
    assert exportfmt.render(parsed.post, permalink=link, tz=settings.tz) == ESSAY
    deleted = parse(DELETED)
    assert deleted.post == parsed.post and deleted.post_id == 4242
    assert deleted.deleted_at is not None
    assert deleted.deleted_at.isoformat() == "2026-04-06T09:30:00+00:00"
    again = exportfmt.render(
        deleted.post, permalink=link, tz=settings.tz, deleted_at=deleted.deleted_at
    )
    assert again == DELETED


HEAD = "# Title\n\n*Workshop · 2026-04-05 15:04:00*\n\nBody\n\n"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, "empty"),
        ("Title without hash\n", 1, "title line"),
        ("# Title\n\nno author line\n", 3, "author line"),
        ("# Title\n\n*Workshop · 2026-02-30 10:00:00*\n\nBody\n", 3, "invalid date"),
        ("# Title\n\n*Workshop · 2026-04-05 15:04:00*\n", 4, "no body"),
        (
            HEAD + "---\n*Debate: split | Conviction: lots*\n",
            8,
            "percentage",
        ),
        (
            HEAD + "---\n*Debate: split | Conviction: 140%*\n",
            8,
            "conviction",
        ),
        (
            HEAD + "---\n*Debate: x | Macro: 1% | Macro: 2%*\n",
            8,
            "duplicate mind",
        ),
        (
            HEAD + "---\nPermanent link: https://x.example/about\n",
            8,
            "permanent link",
        ),
        (
            HEAD + "---\n*Deleted: yesterday*\n---\nPermanent link: https://x.example/read/5/t\n",
            8,
            "deleted: expected",
        ),
        (
            HEAD + "---\n*Tags: QQQ*\n*Deleted: 2026-4-6 9:30:00*\n---\nPermanent link: /read/5\n",
            9,
            "deleted: expected",
        ),
        (
            HEAD + "---\n*Deleted: 2026-02-30 09:30:00*\n---\nPermanent link: /read/5\n",
            8,
            "invalid date",
        ),
        (
            HEAD + "---\n*Deleted: 2026-04-06 09:30:00*\n*Deleted: 2026-04-07 09:30:00*\n",
            8,
            "two deleted lines",
        ),
        (
            HEAD + "---\n*Deleted: 2026-04-06 09:30:00*\n",
            8,
            "needs its permanent link",
        ),
    ],
)
def test_malformed_files_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(FormatError) as info:
        parse(text)
    assert info.value.line == line
    assert words in str(info.value).lower()


def test_import_is_idempotent_and_keeps_ids(tmp_path: Path, engine, settings: Settings) -> None:
    good = write(tmp_path, "good.txt", ESSAY)
    minimal = DATA / "essay-minimal.txt"
    first = [transfer.import_file(engine, settings, p) for p in (good, minimal)]
    assert [r.outcome for r in first] == ["imported", "imported"]
    assert first[0].post_id == 4242
    second = [transfer.import_file(engine, settings, p) for p in (good, minimal)]
    assert [r.outcome for r in second] == ["unchanged", "unchanged"]
    with Session(engine) as session:
        assert len(posts.list_published(session, 10)) == 2
        assert posts.revisions(session, 4242) == []


def test_reimport_of_an_edited_file_updates_and_keeps_a_revision(
    tmp_path: Path, engine, settings: Settings
) -> None:
    transfer.import_file(engine, settings, write(tmp_path, "a.txt", ESSAY))
    edited = ESSAY.replace("Flow saw money", "Flow saw more money")
    result = transfer.import_file(engine, settings, write(tmp_path, "a.txt", edited))
    assert result.outcome == "updated"
    with Session(engine) as session:
        assert "more money" in posts.get_post(session, 4242).body
        assert len(posts.revisions(session, 4242)) == 1


def test_new_posts_after_import_do_not_collide_with_imported_ids(
    tmp_path: Path, engine, settings: Settings
) -> None:
    from conftest import add_post

    transfer.import_file(engine, settings, write(tmp_path, "a.txt", ESSAY))
    post = add_post(engine, cycle=901, title="After the import")
    assert post.id is not None and post.id > 4242


def test_a_deleted_essay_is_imported_deleted_and_reimported_unchanged(
    tmp_path: Path, engine, settings: Settings
) -> None:
    from app.errors import PostGone

    def revisions() -> int:
        with Session(engine) as session:
            return len(posts.revisions(session, 4242))

    deleted = write(tmp_path, "deleted.txt", DELETED)
    first = transfer.import_file(engine, settings, deleted)
    assert (first.outcome, first.post_id, first.deleted) == ("imported", 4242, True)
    assert first.line().endswith("-> post 4242 (deleted)")
    with Session(engine) as session:
        with pytest.raises(PostGone):
            posts.get_post(session, 4242)
        post = posts.get_post(session, 4242, include_deleted=True)
        assert post.updated_at.isoformat() == "2026-04-06T09:30:00+00:00"
        assert posts.list_published(session, 10) == []
    kept = revisions()
    assert transfer.import_file(engine, settings, deleted).outcome == "unchanged"
    assert revisions() == kept

    # A file without the mark publishes it again; the marked file then withdraws it again.
    published = write(tmp_path, "published.txt", ESSAY)
    assert transfer.import_file(engine, settings, published).outcome == "updated"
    with Session(engine) as session:
        assert [p.id for p in posts.list_published(session, 10)] == [4242]
    again = transfer.import_file(engine, settings, deleted)
    assert (again.outcome, again.post_id) == ("deleted", 4242)
    assert again.line() == f"deleted   {deleted} -> post 4242"
    with Session(engine) as session:
        assert posts.get_post(session, 4242, include_deleted=True).status == "deleted"
        assert posts.list_published(session, 10) == []
    assert transfer.import_file(engine, settings, deleted).outcome == "unchanged"

    # Other content for the deleted essay: it keeps the new content, still deleted.
    edited = write(tmp_path, "edited.txt", DELETED.replace("Flow saw money", "Flow saw more"))
    assert transfer.import_file(engine, settings, edited).outcome == "updated"
    with Session(engine) as session:
        post = posts.get_post(session, 4242, include_deleted=True)
        assert post.status == "deleted" and "Flow saw more" in post.body


def test_a_deleted_essay_stays_gone_after_export_and_import(
    tmp_path: Path, engine, settings: Settings, second_database_url: str
) -> None:
    from conftest import SITE_URL, add_post, post_json, test_settings
    from fastapi.testclient import TestClient

    from app import db, tokens
    from app.main import create_app

    kept = add_post(engine, cycle=950, title="Still Here")
    gone = add_post(engine, cycle=951, title="Withdrawn Later")  # the newest id: a reuse shows
    with db.write_session(engine) as session:
        posts.delete_post(session, gone.id)  # type: ignore[arg-type]
    files = sorted(transfer.export_all(engine, settings, tmp_path / "out"))
    assert len(files) == 2

    other = test_settings(second_database_url)
    other_engine = db.make_engine(other)
    results = list(transfer.import_files(other_engine, other, [str(p) for p in files]))
    assert [(r.outcome, r.post_id, r.deleted) for r in results] == [
        ("imported", kept.id, False),
        ("imported", gone.id, True),
    ]
    token = tokens.create_token(other_engine, "engine")
    other_engine.dispose()
    app = create_app(other)
    with TestClient(app, base_url=SITE_URL, follow_redirects=False) as client:
        assert client.get(f"/read/{kept.id}/{kept.slug}").status_code == 200
        assert client.get(f"/read/{gone.id}/{gone.slug}").status_code == 410
        assert [p["id"] for p in client.get("/api/v1/posts").json()["items"]] == [kept.id]
        response = client.post(
            "/api/v1/posts",
            json=post_json(cycle=952, title="Posted After the Move"),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["id"] > gone.id  # type: ignore[operator]
        assert client.get(f"/read/{gone.id}/{gone.slug}").status_code == 410
    app.state.engine.dispose()


def _essay(cycle: int, title: str, day: int, tags: str = "QQQ, breadth") -> str:
    return (
        ESSAY.replace("Breadth Is Thinning Under a Calm Index", title)
        .replace("2026-04-05", f"2026-04-{day:02d}")
        .replace("Cycle 900", f"Cycle {cycle}")
        .replace("*Tags: QQQ, breadth*", f"*Tags: {tags}*")
        .replace(
            "Permanent link: https://old.example/read/4242/breadth-is-thinning-under-a-calm-index",
            "",
        )
    )


def _stored_pages(engine) -> dict[int, str]:
    from sqlalchemy import text

    with Session(engine) as session:
        rows = session.execute(text("SELECT post_id, html FROM essay_pages")).all()
    return {int(post_id): str(html) for post_id, html in rows}


def test_import_in_batches_reports_in_order_and_a_refused_file_undoes_only_itself(
    tmp_path: Path, engine, settings: Settings
) -> None:
    from app import essaypage
    from app.fragments import Renderer

    files = [
        write(tmp_path, "1.txt", _essay(901, "One", 1)),
        write(tmp_path, "2.txt", _essay(902, "Two", 2)),
        write(tmp_path, "3.txt", "# Title\n\nno author line\n"),
        write(tmp_path, "4.txt", _essay(902, "Two, Told Again", 4)),  # cycle 902 is taken
        write(tmp_path, "5.txt", _essay(905, "Five", 5, tags="rates")),
        write(tmp_path, "6.txt", _essay(902, "Two", 2)),  # the same essay again
    ]
    with Session(engine) as session:
        version = posts.content_version(session)
    results = list(transfer.import_files(engine, settings, files, batch_size=2))
    assert [r.path for r in results] == files
    assert [r.outcome for r in results] == [
        "imported",
        "imported",
        "refused",
        "refused",
        "imported",
        "unchanged",
    ]
    assert "cycle 902" in results[3].message
    assert results[5].post_id == results[1].post_id
    with Session(engine) as session:
        titles = [p.title for p in posts.list_published(session, 10)]
        assert titles == ["Five", "Two", "One"]
        # Bumped once by each batch that wrote: (1, 2) and (5, 6), not (3, 4).
        assert posts.content_version(session) == version + 2
    # Every page stored at import links its neighbours as a fresh render does, across batches.
    stored = _stored_pages(engine)
    assert sorted(stored) == sorted(r.post_id for r in results if r.outcome == "imported")
    assert sum(essaypage.refresh_all(engine, Renderer.for_settings(settings), everything=True))
    assert _stored_pages(engine) == stored


def test_a_write_undone_in_a_batch_forgets_the_tags_it_made(engine, settings: Settings) -> None:
    from app import db
    from app.fragments import Renderer
    from app.models import PostIn

    def essay(cycle: int) -> PostIn:
        return PostIn.model_validate(
            {"title": f"Cycle {cycle}", "body": "Flow and Macro.", "cycle": cycle, "tags": ["zeta"]}
        )

    with db.write_session(engine) as session:
        batch = posts.Batch(Renderer.for_settings(settings))
        with pytest.raises(RuntimeError):
            with batch.item(session):
                posts.create_post(session, essay(1), "Workshop", batch=batch)
                raise RuntimeError("refused after its tag was made")
        with batch.item(session):
            kept = posts.create_post(session, essay(2), "Workshop", batch=batch).post.id
        posts.commit_batch(session, batch)
    with Session(engine) as session:
        views = posts.load_views(session, posts.list_published(session, 10))
        assert [(v.post.id, [t.slug for t in v.tags]) for v in views] == [(kept, ["zeta"])]
    assert sorted(_stored_pages(engine)) == [kept]


def test_cli_import_reports_each_file_and_goes_on(tmp_path: Path, database_url: str) -> None:
    bad = write(tmp_path, "bad.txt", "# Title\n\nno author line\n")
    good = write(tmp_path, "good.txt", ESSAY)
    env = {"WORKSHOP_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "import", str(bad), str(good)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("refused") and "bad.txt" in lines[0] and "line 3" in lines[0]
    assert lines[1].startswith("imported") and "post 4242" in lines[1]
    again = subprocess.run(
        [sys.executable, "-m", "app.cli", "import", str(good)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and again.stdout.startswith("unchanged")


def test_export_import_export_gives_identical_files(
    tmp_path: Path, engine, settings: Settings, second_database_url: str
) -> None:
    from conftest import add_post, test_settings

    from app import db

    transfer.import_file(engine, settings, write(tmp_path, "a.txt", ESSAY))
    transfer.import_file(engine, settings, DATA / "essay-minimal.txt")
    add_post(
        engine,
        cycle=950,
        title="Déjà Vu: It’s the Same Rotation 🚀",
        tags=["NVDA", "rotation"],
        debate={
            "outcome": "contested",
            "conviction": 0.125,
            "minds": [{"name": "Volatility", "confidence": 0.875}],
        },
    )
    add_post(engine, cycle=951, title="No Debate This Time", debate=None, tags=[], stories=[])
    withdrawn = add_post(engine, cycle=952, title="Withdrawn After a Day")
    with db.write_session(engine) as session:
        posts.delete_post(session, withdrawn.id)  # type: ignore[arg-type]
    first = sorted(transfer.export_all(engine, settings, tmp_path / "first"))
    assert len(first) == 5
    marked = [p.name for p in first if "\n*Deleted: " in p.read_text(encoding="utf-8")]
    assert marked == [transfer.export_name(withdrawn)]

    # A second, empty database of the same kind receives the export.
    other = test_settings(second_database_url)
    other_engine = db.make_engine(other)
    results = [transfer.import_file(other_engine, other, p) for p in first]
    assert {r.outcome for r in results} == {"imported"}
    second = sorted(transfer.export_all(other_engine, other, tmp_path / "second"))
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    other_engine.dispose()


def test_a_directory_stands_for_its_txt_files_in_name_order(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", "notes.md", "a10.txt"):
        (tmp_path / name).write_text("x")
    named = tmp_path / "notes.md"  # a file named on the command line is taken as it is
    expected = [str(tmp_path / n) for n in ("a.txt", "a10.txt", "b.txt")] + [str(named)]
    assert transfer.expand_paths([tmp_path, named]) == expected


@pytest.mark.parametrize(
    "debate",
    [
        {"outcome": "split | leaning bearish", "conviction": 0.4, "minds": []},
        {"outcome": "x", "conviction": None, "minds": [{"name": "Conviction", "confidence": 0.3}]},
        {"outcome": "x", "conviction": 0.2, "minds": [{"name": "Conviction", "confidence": 0.3}]},
        {"outcome": r"back\slash", "minds": [{"name": "A|B (c); d, e: f", "confidence": 0.5}]},
    ],
)
def test_export_keeps_debates_whose_names_hold_the_separators(settings: Settings, debate) -> None:
    from app.models import PostIn

    post = PostIn.model_validate(
        {"title": "T", "body": "B", "published_at": "2026-04-05T15:04:00Z", "debate": debate}
    )
    again = parse(exportfmt.render(post, permalink=None, tz=settings.tz)).post
    assert again.debate == post.debate


def test_export_keeps_tags_and_stories_whose_names_hold_the_separators(settings: Settings) -> None:
    from app.models import PostIn

    post = PostIn.model_validate(
        {
            "title": "T",
            "body": "B",
            "published_at": "2026-04-05T15:04:00Z",
            "tags": ["rates, duration", "QQQ", r"a\b"],
            "stories": [
                {"title": "Rates; Duration", "status": "partially (re)versing"},
                {"title": "Fed (Dovish) Pivot", "status": "developing"},
            ],
        }
    )
    text = exportfmt.render(post, permalink=None, tz=settings.tz)
    assert r"*Tags: rates\, duration, QQQ, a\\b*" in text
    again = parse(text).post
    assert again.tags == post.tags and again.stories == post.stories


@pytest.mark.parametrize("post_id", ["0", "2147483648", "99999999999999999999"])
def test_a_permanent_link_id_the_database_cannot_hold_is_refused(post_id: str) -> None:
    with pytest.raises(FormatError) as info:
        parse(HEAD + f"---\nPermanent link: https://x.example/read/{post_id}/title\n")
    assert info.value.line == 8
    assert "id must be 1 to 2147483647" in str(info.value)
