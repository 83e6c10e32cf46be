"""uvicorn's httptools protocol, with a response's head and its first body write in one syscall.

uvicorn writes the status line and headers when the app sends http.response.start, and the body
when it sends http.response.body: two socket writes for every answer, and on a VM each costs
~15 us of kernel time. Here the head waits for the body's first write, or for the end of the loop
turn when none comes in it (a stream whose first event is still upstream), and both go together.
"""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeldHead:
    """A request cycle's view of the connection: its first write (the head, or a 100 Continue)
    is held until the next write or the end of the loop turn."""

    __slots__ = ("transport", "held", "first")

    def __init__(self, transport: asyncio.Transport):
        self.transport, self.held, self.first = transport, None, True

    def write(self, data: bytes):
        if self.held is not None:
            held, self.held = self.held, None
            self.transport.writelines((held, data))
        elif self.first:
            self.first, self.held = False, data
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self.transport.write(data)

    def flush(self):
        if self.held is not None:
            held, self.held = self.held, None
            if not self.transport.is_closing():
                self.transport.write(held)

    def close(self):
        self.flush()
        self.transport.close()

    def __getattr__(self, name):  # is_closing, get_extra_info, …: the transport's own
        return getattr(self.transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    def on_headers_complete(self):
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a new request's cycle (not a WebSocket upgrade)
            self.cycle.transport = HeldHead(self.transport)
