"""LLM provider adapters: one `chat(ChatRequest) -> ChatResponse` per provider, all HTTP through
`sparkops.egress`. Errors are `ProviderError`s that say whether a retry can help."""

from __future__ import annotations

from .base import (
    PROVIDERS,
    Attachment,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    Provider,
    ProviderConfig,
    ProviderError,
    ToolCall,
    ToolSpec,
    config_error,
)
from .simulated import SimulatedProvider

__all__ = [
    "PROVIDERS",
    "Attachment",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "Provider",
    "ProviderConfig",
    "ProviderError",
    "SimulatedProvider",
    "ToolCall",
    "ToolSpec",
    "get_provider",
]


def get_provider(config: ProviderConfig) -> Provider:
    """The adapter for `config.provider`. The SDKs are imported only when needed."""
    if config.provider == "simulated":
        return SimulatedProvider(config)
    if config.provider in ("openai", "openai_compatible"):
        from .openai_provider import OpenAIProvider  # the openai SDK is heavy: loaded on use

        return OpenAIProvider(config)
    if config.provider == "anthropic":
        from .anthropic_provider import AnthropicProvider  # the anthropic SDK: loaded on use

        return AnthropicProvider(config)

    raise config_error(
        f"Unknown provider {config.provider!r}; expected one of {', '.join(PROVIDERS)}.",
        provider=config.provider,
    )
