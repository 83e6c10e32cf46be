"""The OpenAI Chat Completions client format: the internal form itself, plus its errors and stream framing."""
from proxy.errors import openai_error_for, openai_stream_error
from proxy.sse import DONE, data_line
from proxy.validation import parse_chat


class OpenAIClient:
    endpoint = "chat.completions"
    # OpenAI upstreams still get the model-family fixes, so no native pass-through.
    native_provider = None

    def parse(self, raw: bytes) -> tuple[dict, None]:
        return parse_chat(raw), None

    def respond(self, response: dict, client_model: str) -> dict:
        return response

    def error(self, err: Exception) -> tuple[int, bytes, dict[str, str]]:
        status, body = openai_error_for(err)
        retry_after = getattr(err, "retry_after", None)
        return status, body, ({"retry-after": str(retry_after)} if retry_after is not None else {})

    def stream(self, chat: dict, base: dict):
        return OpenAIStream(base, bool((chat.get("stream_options") or {}).get("include_usage")))


class OpenAIStream:
    """Writes `chat.completion.chunk` events; the usage chunk only when the client asked."""

    def __init__(self, base: dict, include_usage: bool):
        self.base, self.include_usage = base, include_usage

    def start(self) -> bytes:
        return b""

    def native(self, event: dict) -> bytes:
        raise NotImplementedError("OpenAI clients are never served natively")

    def chunk(self, chunk: dict) -> bytes:
        return data_line({**self.base, **chunk})

    def end(self, usage: dict | None) -> bytes:
        tail = data_line({**self.base, "choices": [], "usage": usage}) if self.include_usage and usage else b""
        return tail + DONE

    def error(self, err: Exception) -> bytes:
        return openai_stream_error(err)
