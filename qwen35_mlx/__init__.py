"""Qwen3.5 on MLX: load once, generate, stream."""

from .errors import ConfigError, GenerationError, MediaError, PromptError, Qwen35Error, WeightsError
from .generate import GenerationChunk, generate, load, stream_generate

__version__ = "0.1.0"
__all__ = ["load", "generate", "stream_generate", "GenerationChunk", "Qwen35Error", "ConfigError",
           "WeightsError", "MediaError", "PromptError", "GenerationError"]
