"""What the plain ASGI wrappers around the FastAPI app (app/main.py) share."""

from collections.abc import Awaitable, Callable

from starlette.types import Message, Receive


def at_startup(receive: Receive, action: Callable[[], None]) -> Receive:
    """The lifespan `receive`, running `action` when the server says it is starting up."""

    async def wrapped() -> Message:
        message = await receive()
        if message["type"] == "lifespan.startup":
            action()
        return message

    return wrapped


def at_shutdown(receive: Receive, action: Callable[[], Awaitable[None]]) -> Receive:
    """The lifespan `receive`, running `action` when the server says it is shutting down."""

    async def wrapped() -> Message:
        message = await receive()
        if message["type"] == "lifespan.shutdown":
            await action()
        return message

    return wrapped
