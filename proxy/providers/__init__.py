"""Provider adapter registry: provider name (the contract's string) -> adapter instance."""
from __future__ import annotations

from .anthropic import AnthropicProvider
from .base import Provider
from .gemini import GeminiProvider
from .ollama import OllamaProvider
from .openai import OpenAIProvider

PROVIDERS: dict[str, Provider] = {
    "openai": OpenAIProvider(),
    "anthropic": AnthropicProvider(),
    "gemini": GeminiProvider(),
    "ollama": OllamaProvider(),
}
