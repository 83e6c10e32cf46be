"""uvicorn's httptools protocol, with a response's head and its first body write in one syscall.

uvicorn writes the status line and headers when the app sends http.response.start, and the body
when it sends http.response.body: two socket writes for every answer, and on a VM each costs
~15 us of kernel time. Here a write waits for the next one, or for the end of the loop turn when
none comes in it (a stream whose first event is still upstream), and both go together; the
answer's last write goes as soon as it is made.
"""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeldWrites:
    """The connection as the protocol, its request cycles and an upgraded WebSocket see it: a write
    is held until the next write or the end of the loop turn. Every write and close goes through
    it, so nothing the protocol writes itself (a 400, a close at shutdown) overtakes what is held."""

    __slots__ = ("transport", "loop", "held", "soon")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self.transport, self.loop, self.held, self.soon = transport, loop, None, None

    def write(self, data: bytes):
        if self.held is not None:
            held, self.held = self.held, None
            self.transport.writelines((held, data))
        else:
            self.held = data
            if self.soon is None:
                self.soon = self.loop.call_soon(self.flush)

    def flush(self):
        if self.soon is not None:
            self.soon.cancel()  # (a no-op when it is the one running)
            self.soon = None
        if self.held is not None:
            held, self.held = self.held, None
            if not self.transport.is_closing():  # (the peer went away meanwhile: nobody to send it to)
                self.transport.write(held)

    def close(self):
        self.flush()
        self.transport.close()

    def __getattr__(self, name):  # is_closing, get_extra_info, set_protocol, abort, …: the transport's own
        return getattr(self.transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport):
        super().connection_made(HeldWrites(transport, asyncio.get_running_loop()))

    def on_response_complete(self):
        # The answer's last write goes now, not at the end of the loop turn: the request's bookkeeping
        # after it (the policies' log phases, the trace) does not delay what the client waits for.
        self.transport.flush()
        super().on_response_complete()
