"""Images -> `pixel_values [N, C*T*P*P]` + `image_grid_thw [n, 3]`, identical to transformers' Qwen2-VL
image processor (PIL backend, what `AutoImageProcessor` picks without torchvision).

load_image: any source -> RGB PIL image (alpha composited on white, as the processor does).
smart_resize: the (h, w) a Qwen image is resized to.  process_images: resize, rescale, normalise,
repeat over T, patchify in merge-block order.  The patchify/normalise helpers are shared with video.py.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MediaError
from .media_config import ImageProcessorConfig

MAX_ASPECT_RATIO = 200
URL_MAX_BYTES = 256 << 20
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def load_image(src: Any, *, timeout: float = 10.0) -> Image.Image:
    """Any image source -> an RGB `PIL.Image`, converted the way transformers' processor converts.

    src: path (str/Path), http(s) URL, `data:image/...;base64,` URL, bytes, `PIL.Image` (any mode), or
    a NumPy array HWC (C in 1/3/4, also CHW) or HW, uint8 / bool / uint16 (16-bit) / float ([0, 1] or
    [0, 255]).  Files, bytes and URLs are EXIF-transposed (as transformers' `load_image`); PIL inputs
    are taken as they are (as the processor does).  Alpha (RGBA, LA, PA, P with transparency) is
    composited onto white.  16-bit images (I;16*, I, uint16 arrays) are scaled to 8 bits (v/257):
    transformers lets Pillow clip them at 255, which turns a real 16-bit photo white.
    Raises MediaError naming the source for anything that cannot be read.
    """
    if isinstance(src, Image.Image):
        return _to_rgb(src, "PIL image")
    if isinstance(src, np.ndarray):
        return _array_to_rgb(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(bytes(src)), f"image bytes ({len(src)} bytes)")
    if isinstance(src, Path):
        return _open_path(src)
    if isinstance(src, str):
        if src.startswith(("http://", "https://")):
            return _open(io.BytesIO(fetch_url(src, timeout=timeout, what="image")), src)
        if src.startswith("data:"):
            return _open(io.BytesIO(decode_data_url(src, "image")), _short(src))
        return _open_path(Path(src[7:] if src.startswith("file://") else src))
    raise MediaError(f"unsupported image input of type {type(src).__name__}: pass a path, URL, bytes, "
                     "PIL image or NumPy array")


def fetch_url(url: str, *, timeout: float, what: str) -> bytes:
    """GET url -> body bytes (at most URL_MAX_BYTES); MediaError naming the URL on any failure."""
    req = urllib.request.Request(url, headers={"User-Agent": "qwen35_mlx"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read(URL_MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise MediaError(f"could not fetch {what} {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise MediaError(f"could not fetch {what} {url}: {reason}") from None
    if len(data) > URL_MAX_BYTES:
        raise MediaError(f"could not fetch {what} {url}: larger than {URL_MAX_BYTES >> 20} MiB")
    return data


def decode_data_url(url: str, what: str) -> bytes:
    """`data:<mime>;base64,<payload>` -> payload bytes."""
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64") or not head[5:].startswith(what + "/"):
        raise MediaError(f"unsupported data URL {_short(url)}: expected data:{what}/...;base64,...")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as e:
        raise MediaError(f"data URL {_short(url)} is not valid base64: {e}") from None


def _short(s: str, n: int = 48) -> str:
    return s if len(s) <= n else s[:n] + "..."


def _open_path(path: Path) -> Image.Image:
    if not path.exists():
        raise MediaError(f"image file not found: {path}")
    if not path.is_file():
        raise MediaError(f"image path is not a file: {path}")
    try:
        with open(path, "rb") as f:
            return _open(f, str(path))
    except OSError as e:
        raise MediaError(f"cannot read image file {path}: {e}") from None


def _open(fp, name: str) -> Image.Image:
    try:
        with Image.open(fp) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im, name)
    except MediaError:
        raise
    except _PIL_ERRORS as e:
        raise MediaError(f"cannot decode image {name}: {type(e).__name__}: {e}") from None


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """PIL image of any mode -> RGB, as transformers' `convert_to_rgb` (alpha over white)."""
    if im.width == 0 or im.height == 0:
        raise MediaError(f"image {name} is empty ({im.width}x{im.height})")
    try:
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return _array_to_rgb(np.asarray(im), name)
        if im.mode == "RGB" and im.info.get("transparency") is None:
            return im  # already what convert("RGB") would copy
        if "A" in im.getbands() or im.info.get("transparency") is not None:
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")
    except _PIL_ERRORS as e:
        raise MediaError(f"cannot convert image {name} (mode {im.mode}) to RGB: {e}") from None


def _array_to_rgb(a: np.ndarray, name: str = "array") -> Image.Image:
    """HW / HWC / CHW array -> RGB PIL image; 4 channels composited on white like transformers."""
    shape = a.shape
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW, as transformers infers it
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise MediaError(f"unsupported image {name} shape {shape}: expected HxW, HxWxC or CxHxW with C in 1, 3, 4")
    a = _to_uint8(a, name)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        alpha = a[..., 3:4] / 255  # float64, then round: transformers' numpy convert_to_rgb
        a = np.round(alpha * a[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a), "RGB")


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise MediaError(f"image {name} values span [{lo}, {hi}]: expected 0..255 or 16-bit 0..65535")
        if a.dtype == np.uint16 or hi > 255:  # 16-bit data: scale, do not clip
            return np.round(a.astype(np.float64) / 257).astype(np.uint8)
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise MediaError(f"image {name} has NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise MediaError(f"image {name} float values span [{lo:g}, {hi:g}]: expected [0, 1] or [0, 255]")
        scale = 255.0 if hi <= 1 else 1.0
        return np.round(a.astype(np.float64) * scale).astype(np.uint8)
    raise MediaError(f"unsupported image {name} dtype {a.dtype}")


def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 65536,
                 max_pixels: int = 16777216) -> tuple[int, int]:
    """(h, w) multiples of `factor`, area within [min_pixels, max_pixels], aspect ratio kept.

    Same arithmetic as transformers' Qwen2-VL `smart_resize` (Python's round-half-even included);
    an aspect ratio above 200 is a MediaError naming the size.
    """
    if height <= 0 or width <= 0:
        raise MediaError(f"image size {height}x{width} (h x w) is empty")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise MediaError(f"image size {height}x{width} (h x w) has aspect ratio {ratio:.1f}, "
                         f"above the model's limit of {MAX_ASPECT_RATIO}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def process_images(images: Any, cfg: ImageProcessorConfig | None = None, min_pixels: int | None = None,
                   max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images -> (pixel_values float32 [N, C*T*P*P], image_grid_thw int64 [n, 3]).

    images: one image or a list of anything `load_image` takes.  min/max_pixels override the
    config's area bounds.  Each image is resized (PIL, cfg.resample = bicubic), rescaled, normalised,
    repeated over T and patchified; rows of each image are in merge-block order.
    """
    cfg = cfg or ImageProcessorConfig()
    lo = cfg.min_pixels if min_pixels is None else int(min_pixels)
    hi = cfg.max_pixels if max_pixels is None else int(max_pixels)
    if not 0 < lo <= hi:
        raise MediaError(f"need 0 < min_pixels <= max_pixels, got min_pixels={lo}, max_pixels={hi}")
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise MediaError("process_images got no images")
    lut = normalize_lut(cfg, fused=False)
    values, grids = [], []
    for item in items:
        im = load_image(item)
        if cfg.do_resize:
            h, w = smart_resize(im.height, im.width, cfg.factor, lo, hi)
            im = im.resize((w, h), resample=cfg.resample)
        frame = np.asarray(im)[None]  # [1, H, W, 3]
        values.append(patchify(frame, lut, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size))
        grids.append((1, frame.shape[1] // cfg.patch_size, frame.shape[2] // cfg.patch_size))
    return np.concatenate(values), np.asarray(grids, dtype=np.int64)


def normalize_lut(cfg, fused: bool) -> np.ndarray:
    """float32 [3, 256]: the processor's value for each uint8 level of each channel.

    fused=False is the image processor (x * scale in float64, cast to float32, then (x - mean) / std in
    float32); fused=True is the torchvision video processor ((x - mean/scale) / (std/scale) in float32).
    Elementwise, so a lookup gives the bit-identical result of either arithmetic.
    """
    x = np.arange(256, dtype=np.float32)[None, :]
    mean = np.asarray(cfg.image_mean, np.float32)[:, None]
    std = np.asarray(cfg.image_std, np.float32)[:, None]
    if cfg.do_rescale and cfg.do_normalize and fused:
        inv = np.float32(1.0 / cfg.rescale_factor)
        out = (x - mean * inv) / (std * inv)
    else:
        if cfg.do_rescale:
            x = (np.arange(256, dtype=np.float64) * cfg.rescale_factor).astype(np.float32)[None, :]
        out = (x - mean) / std if cfg.do_normalize else x
    return np.ascontiguousarray(np.broadcast_to(out, (3, 256)), dtype=np.float32)


def patchify(frames: np.ndarray, lut: np.ndarray, patch: int, merge: int, temporal: int) -> np.ndarray:
    """uint8 frames [F, H, W, C] -> float32 [F/T * H/P * W/P, C*T*P*P] via the lookup `lut` [C, 256].

    F == 1 is a still image repeated over T.  Rows go (t, h-block, w-block, h-in-block, w-in-block),
    each flattened (C, T, P, P), the layout transformers' processors produce.
    """
    F, H, W, C = frames.shape
    gh, gw = H // patch, W // patch
    if gh * patch != H or gw * patch != W or gh % merge or gw % merge:
        raise MediaError(f"frame size {H}x{W} is not a multiple of patch*merge = {patch * merge}")
    step = 1 if F == 1 else temporal  # a still image: computed once, broadcast over T on assignment
    if F % step:
        raise MediaError(f"{F} frames is not a multiple of temporal_patch_size {temporal}")
    out = np.empty((max(F // temporal, 1), gh // merge, gw // merge, merge, merge, C, temporal, patch, patch),
                   np.float32)
    values = np.empty((step, H, W, C), np.float32)
    for g in range(out.shape[0]):  # per temporal group: temporaries stay one group in size
        group = frames[g * step:(g + 1) * step]
        for c in range(C):  # lookup in frame order, contiguous
            values[..., c] = lut[c][group[..., c]]
        blocks = values.reshape(step, gh // merge, merge, patch, gw // merge, merge, patch, C)
        out[g] = blocks.transpose(1, 4, 2, 5, 7, 0, 3, 6)  # (bh, bw, mh, mw, C, T, P, P)
    return out.reshape(-1, C * temporal * patch * patch)


__all__ = ["ImageProcessorConfig", "load_image", "smart_resize", "process_images", "normalize_lut", "patchify"]
