"""The application factory: `create_app(settings)` builds a Workshop app on its own database."""

from importlib.resources import files

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import problems
from app.bodygate import BodyGate
from app.observability import RequestLogMiddleware, configure_logging, metrics_response
from app.config import Settings
from app.db import make_engine
from app.routes import ingest, ops, reader
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
    app.include_router(ingest.router)
    app.add_middleware(BodyGate, max_body_bytes=settings.max_body_bytes)
    app.add_route("/metrics", metrics_response, include_in_schema=False)
    configure_logging(settings.log_json)
    app.add_middleware(RequestLogMiddleware)  # outermost: sees every answer, cached or not
    app.mount("/static", StaticFiles(directory=str(files("app.static"))), name="static")
    return app


def app_from_env() -> FastAPI:
    """Entry point for `uvicorn --factory app.main:app_from_env` (each worker builds its own)."""
    return create_app(Settings())
