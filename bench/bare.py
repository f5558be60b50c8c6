"""The machine's calibration: a bare ASGI callable answering every request with the same bytes.

The issue measured one on its machine at about 0.65 of nginx (stock uvicorn, 2 workers): this
one, served the same way beside nginx in each run, says how far this machine's Python and
uvicorn stand from its nginx, so ratios from machines of different speeds can be read together.
Run as `BENCH_BARE_BODY=file BENCH_BARE_TYPE=text/html uvicorn bench.bare:app`.
"""

import os
from pathlib import Path
from typing import Any

BODY = Path(os.environ.get("BENCH_BARE_BODY", "/dev/null")).read_bytes()
HEADERS = [
    (b"content-type", os.environ.get("BENCH_BARE_TYPE", "text/html").encode()),
    (b"content-length", b"%d" % len(BODY)),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
