"""Bearer-token authentication for API writes, with a brute-force limit shared through the DB.

Failed attempts are counted per client address in the `auth_failures` table, so every worker
and every host behind the load balancer sees the same count. Once a client reaches
`auth_fail_limit` failures inside `auth_fail_window_seconds`, each of its requests is refused
with 429 until the window ends, valid token or not: answering a correct guess with 200 would
keep the guessing game open.
"""

import math
from datetime import timedelta
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine, case, delete, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from app import tokens
from app.config import Settings
from app.db import write_session
from app.errors import WorkshopError
from app.models import ApiToken, AuthFailure, UTCDateTime, utcnow

REALM = 'Bearer realm="workshop"'
# last_used_at is informational; refreshing it at most once a minute keeps most authenticated
# requests off SQLite's write lock.
TOUCH_INTERVAL = timedelta(minutes=1)


class Unauthorized(WorkshopError):
    status = 401
    title = "Unauthorized"


class TooManyAuthFailures(WorkshopError):
    status = 429
    title = "Too many failed authentications"


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="engineToken",
    description="A token from `workshop token create NAME` (starts with `wk_`).",
)


def client_address(request: Request, settings: Settings) -> str:
    """The client's address: the peer, or the X-Forwarded-For entry added by the first
    untrusted hop when the peer is a proxy named in `trusted_proxies`.

    The header is read right to left: every proxy appends the address it saw, so only the
    entries added by our own proxies can be believed; anything further left is client-supplied.
    """
    peer = request.client.host if request.client else "unknown"
    networks = settings.trusted_proxy_networks
    if not networks or not _in(peer, settings):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",")]
    client = peer
    for hop in reversed([h for h in hops if h]):
        if _parse(hop) is None:
            break  # garbage in the header: trust nothing beyond the last proxy we know
        client = hop
        if not _in(hop, settings):
            break
    return client[:100]


def _parse(value: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(value)
    except ValueError:
        return None


def _in(value: str, settings: Settings) -> bool:
    address = _parse(value)
    return address is not None and any(address in net for net in settings.trusted_proxy_networks)


def check_not_locked_out(engine: Engine, settings: Settings, client: str) -> None:
    with Session(engine) as session:
        row = session.get(AuthFailure, client)
    if row is None or row.failures < settings.auth_fail_limit:
        return
    ends = row.window_start + timedelta(seconds=settings.auth_fail_window_seconds)
    remaining = (ends - utcnow()).total_seconds()
    if remaining > 0:
        retry_after = str(max(1, math.ceil(remaining)))
        raise TooManyAuthFailures(
            f"too many failed authentications from {client}; retry in {retry_after} s",
            headers={"Retry-After": retry_after},
        )


def record_failure(engine: Engine, settings: Settings, client: str) -> None:
    """Count one failure: a single upsert, so concurrent failures on any worker all count."""
    now = utcnow()
    expired_before = now - timedelta(seconds=settings.auth_fail_window_seconds)
    table = AuthFailure.__table__  # type: ignore[attr-defined]
    with write_session(engine) as session:
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        expired = table.c.window_start <= literal(expired_before, UTCDateTime())
        stmt = insert(table).values(client=client, window_start=now, failures=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=["client"],
            set_={
                "failures": case((expired, 1), else_=table.c.failures + 1),
                "window_start": case(
                    (expired, literal(now, UTCDateTime())), else_=table.c.window_start
                ),
            },
        )
        session.execute(stmt)
        # Forget finished windows of other clients so the table stays as small as the attack.
        session.execute(delete(table).where(expired, table.c.client != client))
        session.commit()


def _touch_if_stale(engine: Engine, token_id: int) -> None:
    with Session(engine) as session:
        last = session.execute(
            select(col(ApiToken.last_used_at)).where(col(ApiToken.id) == token_id)
        ).scalar()
    if last is not None and utcnow() - last < TOUCH_INTERVAL:
        return
    with write_session(engine) as session:
        tokens.touch(session, token_id)
        session.commit()


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> tokens.Authenticated:
    """The dependency every write uses: the caller's token, or 401 / 429."""
    settings: Settings = request.app.state.settings
    engine: Engine = request.app.state.engine
    client = client_address(request, settings)
    check_not_locked_out(engine, settings, client)
    if credentials is None:
        # Not a guess, so not counted: a misconfigured client should learn it needs a token.
        raise Unauthorized(
            "this endpoint needs an `Authorization: Bearer <token>` header",
            headers={"WWW-Authenticate": REALM},
        )
    caller = None
    with Session(engine) as session:
        caller = tokens.verify(session, credentials.credentials)
    if caller is None:
        record_failure(engine, settings, client)
        raise Unauthorized(
            "the bearer token is unknown or revoked",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    _touch_if_stale(engine, caller.token_id)
    return caller


Caller = Annotated[tokens.Authenticated, Depends(require_token)]
