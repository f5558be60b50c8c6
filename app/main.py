"""The application factory: `create_app(settings)` builds a Workshop app on its own database."""

from importlib.resources import files

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import problems, websub
from app.config import Settings
from app.db import make_engine
from app.routes import feeds, ops, reader
from app.templating import make_templates


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="Workshop",
        version="1",
        summary="Essays from a market-debate engine: reader site, feeds and the ingest API.",
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings)
    app.state.templates = make_templates(settings)
    problems.install(app)
    app.include_router(ops.router)
    app.include_router(reader.router)
    app.include_router(feeds.router)
    websub.install(app)  # pings the WebSub hub after each write, when one is configured
    app.mount("/static", StaticFiles(directory=str(files("app.static"))), name="static")
    return app


def app_from_env() -> FastAPI:
    """Entry point for `uvicorn --factory app.main:app_from_env` (each worker builds its own)."""
    return create_app(Settings())
