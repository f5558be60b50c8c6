"""Reader pages: thin handlers that call the post service and pick a template."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import posts
from app.db import SessionDep
from app.errors import PostGone
from app.urls import post_path

router = APIRouter(include_in_schema=False)


def render(request: Request, template: str, status_code: int = 200, **context: object) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(
        request, template, context, status_code=status_code
    )


def error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    return render(request, "error.html", status_code=status, status=status, title=title, detail=detail)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: SessionDep) -> HTMLResponse:
    settings = request.app.state.settings
    newest = posts.list_published(session, settings.page_size)
    return render(request, "index.html", views=posts.load_views(session, newest))


@router.get("/read/{post_id}", response_class=RedirectResponse)
@router.get("/read/{post_id}/", response_class=RedirectResponse)
def read_without_slug(post_id: int, session: SessionDep) -> Response:
    return _redirect_to(posts.get_post(session, post_id))


@router.get("/read/{post_id}/{slug}", response_class=HTMLResponse)
def read(request: Request, post_id: int, slug: str, session: SessionDep) -> Response:
    post = posts.get_post(session, post_id, include_deleted=True)
    if post.status == posts.STATUS_DELETED:
        raise PostGone(f"essay {post_id} was withdrawn")
    if slug != post.slug:
        return _redirect_to(post)
    view = posts.load_views(session, [post])[0]
    older, newer = posts.neighbours(session, post)
    return render(request, "post.html", view=view, post=post, older=older, newer=newer)


@router.get("/cycle/{cycle}")
def cycle(cycle: int, session: SessionDep) -> Response:
    post = posts.get_post(session, posts.post_id_for_cycle(session, cycle))
    return _redirect_to(post, status=302)


def _redirect_to(post: posts.Post, status: int = 301) -> RedirectResponse:
    return RedirectResponse(post_path(post), status_code=status)
