"""preprocessor_config.json / video_preprocessor_config.json -> frozen configs; errors name the key.

Defaults are the values the Qwen3.5 hub checkpoints ship, so a checkpoint without the files still
preprocesses exactly like `transformers` does with them. Unknown keys are kept in `extra`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

IMAGE_CONFIG_FILE = "preprocessor_config.json"
VIDEO_CONFIG_FILE = "video_preprocessor_config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"  # newer saves nest both configs here

_COMMON_KEYS = {
    "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "size",
    "min_pixels", "max_pixels", "resample", "rescale_factor", "do_resize", "do_rescale", "do_normalize",
}
_VIDEO_KEYS = {"fps", "min_frames", "max_frames"}


@dataclass(frozen=True)
class ImageProcessorConfig:
    """Qwen2-VL image processor settings (`preprocessor_config.json`).

    `min_pixels`/`max_pixels` bound the resized image area (`size.shortest_edge`/`longest_edge`).
    """

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    min_pixels: int = 65536
    max_pixels: int = 16777216
    resample: int = 3  # PIL.Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def factor(self) -> int:
        """Side multiple of a resized image: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_dict(cls, d: dict, where: str = IMAGE_CONFIG_FILE) -> "ImageProcessorConfig":
        return cls(**_parse_common(d, where, cls()), extra=_extra(d, _COMMON_KEYS))

    @classmethod
    def from_dir(cls, path: str | Path) -> "ImageProcessorConfig":
        d, where = _read_config(Path(path), IMAGE_CONFIG_FILE, "image_processor")
        return cls() if d is None else cls.from_dict(d, where)


@dataclass(frozen=True)
class VideoProcessorConfig:
    """Qwen3-VL video processor settings (`video_preprocessor_config.json`).

    `min_pixels`/`max_pixels` (`size.shortest_edge`/`longest_edge`) bound the pixels of ALL sampled
    frames together, as in `transformers`' Qwen3-VL `smart_resize(num_frames, ...)`: 25165824 is a
    budget of 12288 visual tokens per video. `fps` is the sampling rate (frames per second of video).
    """

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    min_pixels: int = 4096
    max_pixels: int = 25165824
    resample: int = 3
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_dict(cls, d: dict, where: str = VIDEO_CONFIG_FILE) -> "VideoProcessorConfig":
        default = cls()
        kw = _parse_common(d, where, default)
        kw["fps"] = _number(d, "fps", where, default.fps, positive=True)
        kw["min_frames"] = _integer(d, "min_frames", where, default.min_frames)
        kw["max_frames"] = _integer(d, "max_frames", where, default.max_frames)
        if kw["min_frames"] > kw["max_frames"]:
            raise ConfigError(f"{where}: min_frames={kw['min_frames']} > max_frames={kw['max_frames']}")
        return cls(**kw, extra=_extra(d, _COMMON_KEYS | _VIDEO_KEYS))

    @classmethod
    def from_dir(cls, path: str | Path) -> "VideoProcessorConfig":
        d, where = _read_config(Path(path), VIDEO_CONFIG_FILE, "video_processor")
        return cls() if d is None else cls.from_dict(d, where)


def _read_config(path: Path, name: str, nested_key: str) -> tuple[dict | None, str]:
    """The config dict from `name`, else from processor_config.json[nested_key], else None."""
    if not path.is_dir():
        raise ConfigError(f"{path}: not a directory")
    for file, key in ((path / name, None), (path / PROCESSOR_CONFIG_FILE, nested_key)):
        if not file.is_file():
            continue
        try:
            d = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{file}: cannot read JSON ({e})") from None
        if key is not None:
            d = d.get(key) if isinstance(d, dict) else None
            if d is None:
                continue
        if not isinstance(d, dict):
            raise ConfigError(f"{file}{'.' + key if key else ''}: expected a JSON object")
        return d, f"{file.name}{'.' + key if key else ''}"
    return None, name


def _parse_common(d: dict, where: str, default) -> dict[str, Any]:
    size = d.get("size") or {}
    if not isinstance(size, dict):
        raise ConfigError(f"{where}: size must be an object with shortest_edge/longest_edge, got {size!r}")
    # transformers: size.{shortest,longest}_edge; legacy size.{min,max}_pixels; top-level min/max_pixels win
    min_pixels = d.get("min_pixels", size.get("shortest_edge", size.get("min_pixels", default.min_pixels)))
    max_pixels = d.get("max_pixels", size.get("longest_edge", size.get("max_pixels", default.max_pixels)))
    kw = {
        "patch_size": _integer(d, "patch_size", where, default.patch_size),
        "temporal_patch_size": _integer(d, "temporal_patch_size", where, default.temporal_patch_size),
        "merge_size": _integer(d, "merge_size", where, default.merge_size),
        "image_mean": _triple(d, "image_mean", where, default.image_mean),
        "image_std": _triple(d, "image_std", where, default.image_std, nonzero=True),
        "min_pixels": _integer({"size.shortest_edge": min_pixels}, "size.shortest_edge", where, 0),
        "max_pixels": _integer({"size.longest_edge": max_pixels}, "size.longest_edge", where, 0),
        "resample": _integer(d, "resample", where, default.resample, lo=0),
        "rescale_factor": _number(d, "rescale_factor", where, default.rescale_factor, positive=True),
        "do_resize": _flag(d, "do_resize", where, default.do_resize),
        "do_rescale": _flag(d, "do_rescale", where, default.do_rescale),
        "do_normalize": _flag(d, "do_normalize", where, default.do_normalize),
    }
    if kw["resample"] > 5:
        raise ConfigError(f"{where}: resample={kw['resample']} is not a PIL resampling filter (0..5)")
    if kw["min_pixels"] > kw["max_pixels"]:
        raise ConfigError(f"{where}: min pixels {kw['min_pixels']} > max pixels {kw['max_pixels']}")
    return kw


def _extra(d: dict, known: set[str]) -> dict:
    return {k: v for k, v in d.items() if k not in known}


def _integer(d: dict, key: str, where: str, default: int, lo: int = 1) -> int:
    v = d.get(key, default)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: {key} must be an integer >= {lo}, got {v!r}")
    return v


def _number(d: dict, key: str, where: str, default: float, positive: bool = False) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise ConfigError(f"{where}: {key} must be a {'positive ' if positive else ''}number, got {v!r}")
    return float(v)


def _flag(d: dict, key: str, where: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: {key} must be true or false, got {v!r}")
    return v


def _triple(d: dict, key: str, where: str, default: tuple, nonzero: bool = False) -> tuple[float, ...]:
    v = d.get(key, default)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v] * 3
    ok = isinstance(v, (list, tuple)) and len(v) == 3
    ok = ok and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    if not ok or (nonzero and any(x == 0 for x in v)):
        raise ConfigError(f"{where}: {key} must be 3 {'non-zero ' if nonzero else ''}numbers, got {v!r}")
    return tuple(float(x) for x in v)
