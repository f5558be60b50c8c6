"""The application factory: `create_app(settings)` builds a Workshop app on its own database."""

from importlib.resources import files

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import problems
from app.cache import ResponseCache
from app.config import Settings
from app.db import make_engine
from app.routes import ops, reader
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
    app.mount("/static", StaticFiles(directory=str(files("app.static"))), name="static")
    if settings.response_cache:
        # Keep this the last add_middleware call: the last added runs first, before routing.
        app.add_middleware(
            ResponseCache,
            engine=app.state.engine,
            max_entries=settings.response_cache_max_entries,
            max_bytes=settings.response_cache_max_bytes,
            max_entry_bytes=settings.response_cache_max_entry_bytes,
        )
    return app


def app_from_env() -> FastAPI:
    """Entry point for `uvicorn --factory app.main:app_from_env` (each worker builds its own)."""
    return create_app(Settings())
