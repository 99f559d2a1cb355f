"""Qwen3.5 on MLX: load once, generate, stream.

    from qwen35_mlx import load, generate, stream_generate
    model, processor = load("Qwen/Qwen3.5-0.8B")
"""

import warnings

# `python -m qwen35_mlx.generate` runs generate.py as __main__ after this package imported it as a
# module; that is intended (the functions below are the library API), so runpy's notice is noise.
warnings.filterwarnings("ignore", message=r".*'qwen35_mlx\.generate' found in sys\.modules", category=RuntimeWarning)

from .errors import ConfigError, GenerationError, MediaError, PromptError, Qwen35Error, WeightsError  # noqa: E402
from .cache import PromptCache  # noqa: E402
from .generate import GenerationChunk, generate, load, stream_generate  # noqa: E402

__version__ = "0.1.0"
__all__ = ["load", "generate", "stream_generate", "GenerationChunk", "PromptCache", "Qwen35Error", "ConfigError",
           "WeightsError", "MediaError", "PromptError", "GenerationError"]
