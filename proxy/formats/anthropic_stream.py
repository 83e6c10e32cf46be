"""Anthropic Messages streams for clients on `POST /v1/messages`: OpenAI chunks in, Anthropic events out (PROVIDERS.md §5.7)."""
from __future__ import annotations

import json
import logging

from proxy.sse import named_event

from .anthropic import (Event, anthropic_usage, error_body, error_status_and_type, new_message_id,
                        new_tool_use_id, stop_reason)

log = logging.getLogger(__name__)


class StreamTranslator:
    """OpenAI chunk dicts in, Anthropic (event name, payload) pairs out, for one stream.

    Only one content block is open at a time, as Anthropic streams them; tool-call
    argument fragments are forwarded as they come, including those carried by a
    call's first delta (upstreams that deliver whole calls put everything there).
    """

    def __init__(self, client_model: str, message_id: str | None = None):
        self.client_model = client_model
        self.message_id = message_id or new_message_id()
        self.started = False
        self.finished = False
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self._next_block = 0
        self._open: int | None = None  # index of the open content block
        self._open_is_text = False
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool-call index -> block index

    def start(self, input_tokens: int | None = None) -> list[Event]:
        if self.started:
            return []
        self.started = True
        return [("message_start", {"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant",
            "model": self.client_model, "content": [], "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens or 0, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}})]

    def ping(self) -> list[Event]:
        return [("ping", {"type": "ping"})] if self.started and not self.finished else []

    def feed(self, chunk: dict) -> list[Event]:
        if self.finished:
            return []
        if isinstance(chunk.get("error"), dict):
            err = chunk["error"]
            return self.error(err.get("type") or "server", err.get("message") or "upstream error")
        events = self.start()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # Anthropic has a single answer; n>1 cannot be represented
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if isinstance(text, str) and text:
                events += self._text(text)
            for position, call in enumerate(delta.get("tool_calls") or []):
                events += self._tool_call(call, position)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def finish(self, finish_reason: str | None = None, usage: dict | None = None) -> list[Event]:
        if self.finished:
            return []
        events = self.start()
        events += self._close()
        self.finished = True
        reason = stop_reason(finish_reason or self.finish_reason, bool(self._tool_blocks))
        totals = anthropic_usage(usage or self.usage)
        delta_usage: dict[str, int] = {"output_tokens": totals["output_tokens"]}
        if usage or self.usage:
            # Input is only known at the end; message_delta usage is cumulative (§2.4).
            delta_usage["input_tokens"] = totals["input_tokens"]
            delta_usage["cache_read_input_tokens"] = totals["cache_read_input_tokens"]
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": reason, "stop_sequence": None},
                                         "usage": delta_usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def error(self, kind_or_status: str | int, message: str) -> list[Event]:
        """The in-band error event for a stream whose 200 status already went out (§5.8)."""
        if self.finished:
            return []
        self.finished = True
        status, type_ = error_status_and_type(kind_or_status)
        return [("error", error_body(status, type_, message))]

    def _open_block(self, content_block: dict) -> list[Event]:
        events = self._close()
        self._open = self._next_block
        self._next_block += 1
        return events + [("content_block_start", {"type": "content_block_start",
                                                  "index": self._open,
                                                  "content_block": content_block})]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _text(self, text: str) -> list[Event]:
        events = []
        if self._open is None or not self._open_is_text:
            events = self._open_block({"type": "text", "text": ""})
            self._open_is_text = True
        return events + [("content_block_delta", {"type": "content_block_delta",
                                                  "index": self._open,
                                                  "delta": {"type": "text_delta", "text": text}})]

    def _tool_call(self, call: dict, position: int) -> list[Event]:
        key = call.get("index", position)
        function = call.get("function") or {}
        events = []
        if key not in self._tool_blocks:
            events = self._open_block({"type": "tool_use", "id": call.get("id") or new_tool_use_id(),
                                       "name": function.get("name") or "", "input": {}})
            self._open_is_text = False
            self._tool_blocks[key] = self._open
        block = self._tool_blocks[key]
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # some upstreams hand over parsed arguments
            arguments = json.dumps(arguments, ensure_ascii=False)
        if not arguments:
            return events
        if block != self._open:
            # A fragment for a call whose block is already closed (interleaved calls).
            # Dropping it would corrupt the call's input; late is better than lost.
            log.warning("tool call %s: argument fragment after its block closed", key)
        return events + [("content_block_delta", {
            "type": "content_block_delta", "index": block,
            "delta": {"type": "input_json_delta", "partial_json": arguments}})]


# --- errors ---------------------------------------------------------------------


def _frame(events: list[Event]) -> bytes:
    return b"".join(named_event(name, payload) for name, payload in events)


class AnthropicStream:
    """Writes a stream to an Anthropic client: named SSE events, no [DONE]."""

    def __init__(self, client_model: str):
        self.client_model = client_model
        self.translator = StreamTranslator(client_model)
        self.is_native = False

    def start(self) -> bytes:
        return b""  # message_start goes with the first event (from the translator, or native)

    def native(self, event: dict) -> bytes:
        """An event from an Anthropic upstream, forwarded as it is but for the model name."""
        self.is_native = True
        self.translator.finished = True  # the upstream sends its own message_stop
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            event = {**event, "message": {**event["message"], "model": self.client_model}}
        return named_event(event.get("type", "unknown"), event)

    def chunk(self, chunk: dict) -> bytes:
        return _frame(self.translator.feed(chunk))

    def end(self, usage: dict | None) -> bytes:
        return _frame(self.translator.finish(usage=usage))

    def error(self, err: Exception) -> bytes:
        kind = getattr(err, "kind", None) or getattr(err, "status", None) or "server"
        self.translator.finished = False  # an error event may follow native events too
        return _frame(self.translator.error(kind, str(err) or "The upstream stream failed."))
