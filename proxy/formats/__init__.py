"""Client wire formats, each translated to and from the internal OpenAI form.

A format has parse(raw) -> internal request, respond(response, client_model),
error(exc) -> (status, body, headers) and stream(chat, base) -> a writer with
start(), chunk(chunk), end(usage) and error(exc), each returning bytes.
"""
from .anthropic import AnthropicClient
from .openai import OpenAIClient

OPENAI = OpenAIClient()
ANTHROPIC = AnthropicClient()
