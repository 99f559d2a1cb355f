"""The errors users see. Each names what was wrong and, where it helps, what to do."""


class Qwen35Error(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(Qwen35Error, ValueError):
    """config.json is missing, malformed or describes a model this package does not run."""


class WeightsError(Qwen35Error, ValueError):
    """Weights are missing, truncated, mis-shaped or do not match the config."""


class MediaError(Qwen35Error, ValueError):
    """An image or video could not be read or does not fit the model's constraints."""


class PromptError(Qwen35Error, ValueError):
    """A prompt is too long for the model or its media placeholders do not match the media given."""


class GenerationError(Qwen35Error, ValueError):
    """A generation parameter is out of range."""
