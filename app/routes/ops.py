"""Operator endpoints: liveness and readiness."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.db import is_at_head, sqlite_file

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    path = sqlite_file(request.app.state.engine)
    if path is not None and not path.exists():  # deleted under the server: writes are refused
        return JSONResponse(
            {"status": "unavailable", "detail": "the database file is missing"}, status_code=503
        )
    try:
        ready = await run_in_threadpool(is_at_head, request.app.state.engine)
    except Exception as exc:  # any database failure means "not ready", never a 500
        return JSONResponse(
            {"status": "unavailable", "detail": type(exc).__name__}, status_code=503
        )
    if not ready:
        return JSONResponse({"status": "migrations pending"}, status_code=503)
    return JSONResponse({"status": "ready"})
