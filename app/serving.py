"""How `workshop serve` speaks HTTP: uvicorn's httptools protocol, sending each answer in one go.

uvicorn writes a response's status line and headers as soon as the app starts the response, and
its body when the app sends it: two `send` system calls per answer. Over a socket every send does
the network stack's work for its segment, so for a cached page the second call cost about as
much as everything the worker does in Python (py-spy: the two writes were a third of a popular
essay's samples). nginx sends both in one call. Here a connection's writes are held until the
step of the event loop that made them ends, then sent together (`writelines`: one `writev`):
headers and body of an answer leave in one segment, and nothing waits longer than one turn of
the loop. Bare ASGI callable, 2 workers, `wrk -t2 -c32`: 44,000 -> 56,500 requests/s.
"""

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# What `workshop serve` passes to uvicorn (a string: the workers import it).
PROTOCOL = "app.serving:OneSendHttpProtocol"


class HeldWrites:
    """A transport whose writes wait for the end of the current loop step, then go out together.

    Everything but writing and closing is the real transport's. Closing sends what is held
    first; what is held when the peer has gone is dropped, as the transport itself drops it.
    """

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self._send)
        else:
            self._held.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _send(self) -> None:
        held, self._held = self._held, None
        if not held or self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        else:
            self._transport.writelines(held)

    def close(self) -> None:
        self._send()
        self._transport.close()

    # Called on every request by uvicorn: spelled out rather than found through __getattr__.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneSendHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through `HeldWrites`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held: Any = HeldWrites(transport, self.loop)
        super().connection_made(held)
