"""Engine API tokens: shown once, stored as a SHA-256 hash, compared in constant time."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from app.db import write_session
from app.errors import WorkshopError
from app.models import ApiToken, utcnow

TOKEN_PREFIX = "wk_"


class TokenNameTaken(WorkshopError):
    status = 409
    title = "Token name taken"


class TokenNotFound(WorkshopError):
    status = 404
    title = "Token not found"


@dataclass
class Authenticated:
    token_id: int
    name: str


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of randomness, so a plain SHA-256 (no slow KDF) cannot be guessed.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(engine: Engine, name: str) -> str:
    """A new token for `name`, which no live token may have (a revoked one's name is free)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise WorkshopError("a token name is 1 to 100 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    taken = TokenNameTaken(f"a token named {name!r} already exists")
    with write_session(engine) as session:
        if _live(session, name) is not None:
            raise taken
        session.add(ApiToken(name=name, token_hash=hash_token(token), created_at=utcnow()))
        try:
            session.commit()
        except IntegrityError:
            # On PostgreSQL another create of this name can commit between the check and the
            # insert; the unique index on live names refuses the later one.
            session.rollback()
            if _live(session, name) is not None:
                raise taken from None
            raise
    return token


def list_tokens(engine: Engine) -> list[ApiToken]:
    """Every token, revoked ones too; a name's tokens oldest first (its live one, if any, last)."""
    with Session(engine) as session:
        return list(
            session.execute(
                select(ApiToken).order_by(col(ApiToken.name), col(ApiToken.id))
            ).scalars()
        )


def revoke_token(engine: Engine, name: str) -> None:
    """Revoke the live token named `name`; its revoked namesakes are left as they are."""
    with write_session(engine) as session:
        token = _live(session, name)
        if token is None:
            if session.execute(select(col(ApiToken.id)).where(col(ApiToken.name) == name)).first():
                raise TokenNotFound(f"no live token named {name!r}: it is already revoked")
            raise TokenNotFound(f"no token named {name!r}")
        token.revoked_at = utcnow()
        session.add(token)
        session.commit()


def _live(session: Session, name: str) -> ApiToken | None:
    live = select(ApiToken).where(col(ApiToken.name) == name, col(ApiToken.revoked_at).is_(None))
    return session.execute(live).scalars().first()


def verify(session: Session, presented: str) -> Authenticated | None:
    """The token's owner, or None for an unknown or revoked token.

    The lookup is by hash (an index probe that leaks nothing about the secret); the final
    comparison is constant-time all the same, so no timing depends on the presented bytes.
    """
    if not presented.startswith(TOKEN_PREFIX) or len(presented) > 200:
        return None
    digest = hash_token(presented)
    token = session.execute(select(ApiToken).where(ApiToken.token_hash == digest)).scalars().first()  # type: ignore[arg-type]
    if token is None or token.revoked_at is not None:
        return None
    if not hmac.compare_digest(token.token_hash, digest):
        return None
    return Authenticated(token.id, token.name)


def touch(session: Session, token_id: int) -> None:
    """Record last use (at most once a minute per token, to keep reads off the write lock)."""
    now = utcnow()
    session.execute(
        update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now)  # type: ignore[arg-type]
    )
