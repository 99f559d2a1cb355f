"""Video -> frames sampled by timestamp (streamed, memory-bounded) -> `pixel_values_videos`,
`video_grid_thw` and one timestamp per temporal patch, as transformers' Qwen3-VL processors give them.

load_video: plan first (how many frames, which timestamps, what size) from the container metadata,
then decode once, keeping only the frame nearest each target timestamp, resized on the spot.
process_video: rescale, normalise, patchify with T consecutive frames per temporal patch.
video_prompt_timestamps: the `<t.t seconds>` strings the prompt announces each temporal patch with.
"""

from __future__ import annotations

import io
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import av
import numpy as np
from PIL import Image

from ..errors import MediaError
from .image import MAX_ASPECT_RATIO, decode_data_url, fetch_url, load_image, normalize_lut, patchify
from .media_config import VideoProcessorConfig

MIN_FRAME_TOKENS = 128  # frames are dropped only once each would fall below this many tokens
MIN_SEEK_GAP = 1.0  # seconds; a shorter gap is always decoded through
MAX_WORKERS = 4  # threads converting + resizing kept frames while the decoder runs
URL_TIMEOUT = 60.0  # seconds; a URL is downloaded whole (at most image.URL_MAX_BYTES), then decoded


@dataclass(frozen=True, eq=False)
class Video:
    """Sampled, resized frames and when they were shown.

    frames: uint8 [F, H, W, 3], F a multiple of temporal_patch_size (the last frame repeated),
    H and W multiples of patch*merge.  timestamps: float64 [F], seconds from the stream's first frame.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    source_fps: float | None
    duration: float | None
    source_size: tuple[int, int]  # (H, W) before resizing
    decoded_frames: int = 0  # frames the decoder produced to find them (files only)


def load_video(src: Any, *, fps: float | None = None, min_frames: int | None = None,
               max_frames: int | None = None, max_pixels: int | None = None, min_pixels: int | None = None,
               max_tokens: int | None = None, max_frame_tokens: int | None = None,
               cfg: VideoProcessorConfig | None = None) -> Video:
    """A video file (path, http(s) URL, bytes, `data:video/...;base64,` URL), a list of images or an
    array [F, H, W, C] -> `Video`.

    Files: `fps` (default cfg.fps = 2) is the sampling rate.  The frame count is transformers' Qwen3-VL
    rule, int(frames / source_fps * fps) clamped to [min_frames, max_frames] and the frame count, and
    the targets are its evenly spaced frame indices, as timestamps.  Decoding is sequential (seeking
    ahead when the next target is more than two keyframe intervals away), and only the frame nearest
    each target is converted to RGB and resized (in worker threads, a few frames in flight), so memory
    is the kept frames plus the decoder's own, whatever the video's length or resolution.  Timestamps
    are the kept frames' own presentation times.  Resizing is PIL bicubic, width then height, as
    torchvision's uint8 kernel (transformers' video path) does it: within 2/255 of it after resizing.
    Lists and arrays: every frame is kept (evenly subsampled down to max_frames or the budget) and
    `fps` is their rate: frame i is shown at i / fps.

    Sizes.  Without limits each frame gets transformers' size: `smart_resize(F, H, W)` with
    cfg.min_pixels/max_pixels the area of all F frames together.  The limits:
      max_tokens        total visual tokens, F/T * (h/32) * (w/32) for patch 16, merge 2, T 2;
      max_frame_tokens  tokens per temporal patch, (h/32) * (w/32) (transformers' per-frame cap);
      max_pixels        pixels per frame (h * w);   min_pixels: pixels per frame, a floor.
    Under max_tokens the resolution gives way first, down to MIN_FRAME_TOKENS per frame (or the
    source's own size if smaller); only then are frames dropped (spread evenly over the whole video,
    even min_frames: the budget is hard).  Frames carry the timeline: a dropped frame loses an event
    and its timestamp outright, a smaller one still shows it, and Qwen's own recipe (qwen-vl-utils)
    likewise fixes the frame count from fps and divides a total pixel budget among the frames.
    """
    cfg = cfg or VideoProcessorConfig()
    p = _check_params(cfg, fps, min_frames, max_frames, max_pixels, min_pixels, max_tokens, max_frame_tokens)
    if isinstance(src, (list, tuple)) or (isinstance(src, np.ndarray) and src.ndim >= 3):
        return _load_frames(src, cfg, p)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _load_file(io.BytesIO(bytes(src)), f"video bytes ({len(src)} bytes)", cfg, p)
    if isinstance(src, str) and src.startswith("data:"):
        return _load_file(io.BytesIO(decode_data_url(src, "video")), src[:40] + "...", cfg, p)
    if isinstance(src, str) and src.startswith(("http://", "https://")):
        return _load_file(io.BytesIO(fetch_url(src, timeout=URL_TIMEOUT, what="video")), src, cfg, p)
    if isinstance(src, (str, Path)):
        path = Path(src[7:] if isinstance(src, str) and src.startswith("file://") else src)
        if not path.exists():
            raise MediaError(f"video file not found: {path}")
        if not path.is_file():
            raise MediaError(f"video path is not a file: {path}")
        return _load_file(str(path), str(path), cfg, p)
    raise MediaError(f"unsupported video input of type {type(src).__name__}: pass a path, bytes, "
                     "a list of images or an array [F, H, W, C]")


def process_video(video: Video, cfg: VideoProcessorConfig | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Video -> (pixel_values_videos float32 [N, C*T*P*P], video_grid_thw int64 [1, 3],
    one timestamp per temporal patch: the mean of its first and last frame's time, as transformers'
    Qwen3-VL processor computes them).  Frames must come from `load_video` (sizes multiples of 32)."""
    cfg = cfg or VideoProcessorConfig()
    frames, T = video.frames, cfg.temporal_patch_size
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise MediaError(f"video frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if len(frames) % T:
        frames = np.concatenate([frames, np.repeat(frames[-1:], T - len(frames) % T, axis=0)])
    lut = normalize_lut(cfg, fused=True)  # transformers' torchvision path fuses rescale into normalise
    pixel_values = patchify(frames, lut, cfg.patch_size, cfg.merge_size, T)
    grid = np.array([[len(frames) // T, frames.shape[1] // cfg.patch_size, frames.shape[2] // cfg.patch_size]],
                    dtype=np.int64)
    return pixel_values, grid, group_timestamps(video.timestamps, T)


def group_timestamps(timestamps, temporal_patch_size: int = 2) -> list[float]:
    """Per-frame times -> one per temporal patch, (first + last) / 2 of its frames (padded like frames)."""
    ts = [float(t) for t in timestamps]
    if not ts:
        return []
    ts += [ts[-1]] * (-len(ts) % temporal_patch_size)
    return [(ts[i] + ts[i + temporal_patch_size - 1]) / 2 for i in range(0, len(ts), temporal_patch_size)]


def video_prompt_timestamps(timestamps) -> list[str]:
    """Per-temporal-patch times (from `process_video`) -> the prompt text before each patch's
    `<vision_start>`: `<{t:.1f} seconds>`, exactly as transformers' Qwen3-VL processor writes it."""
    return [f"<{float(t):.1f} seconds>" for t in timestamps]


def smart_resize_video(num_frames: int, height: int, width: int, temporal_factor: int = 2, factor: int = 32,
                       min_pixels: int = 4096, max_pixels: int = 25165824) -> tuple[int, int]:
    """(h, w) for F frames of HxW: transformers' Qwen3-VL video `smart_resize`, where min/max_pixels
    bound the area of all frames together (t_bar * h * w), tiny frames are first scaled up to the
    factor, and an aspect ratio above 200 is a MediaError naming the size."""
    if height <= 0 or width <= 0:
        raise MediaError(f"video frame size {height}x{width} (h x w) is empty")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise MediaError(f"video frame size {height}x{width} (h x w) has aspect ratio {ratio:.1f}, "
                         f"above the model's limit of {MAX_ASPECT_RATIO}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def plan_video(num_frames: int, height: int, width: int, cfg: VideoProcessorConfig | None = None, *,
               max_tokens: int | None = None, max_frame_tokens: int | None = None,
               max_pixels: int | None = None, min_pixels: int | None = None) -> tuple[int, int, int]:
    """(frames to keep, h, w) for `num_frames` sampled frames of HxW under the limits of `load_video`."""
    cfg = cfg or VideoProcessorConfig()
    T, f = cfg.temporal_patch_size, cfg.factor
    total_max = cfg.max_pixels if max_tokens is None else min(cfg.max_pixels, max_tokens * T * f * f)
    caps = [c for c in (max_pixels, None if max_frame_tokens is None else max_frame_tokens * f * f) if c]
    frame_cap = min(caps) if caps else None
    n = num_frames
    if max_tokens is not None:
        floor = min(MIN_FRAME_TOKENS * f * f, frame_cap or math.inf, max(height * width, f * f))
        fit = max(1, int(total_max // floor))  # frames that fit at the floor resolution
        if fit < n:
            n = fit - fit % T if fit >= T else fit  # a padded frame would spend tokens on a copy
    while True:
        if frame_cap is not None:  # transformers' cap_pixels_per_frame rule, with our cap
            per_frame = max(min(frame_cap, total_max // n), int(cfg.min_pixels * 1.05))
            hi = per_frame * n
        else:
            hi = total_max
        lo = cfg.min_pixels if min_pixels is None else min_pixels * n
        h, w = smart_resize_video(max(n, T), height, width, T, f, lo, max(lo, hi))
        tokens = -(-n // T) * (h // f) * (w // f)
        if max_tokens is None or tokens <= max_tokens:
            return n, h, w
        if n <= T:
            raise MediaError(f"max_tokens={max_tokens} is too small for this video: one temporal patch of "
                             f"{height}x{width} frames needs {tokens} tokens")
        n -= n % T or T


@dataclass(frozen=True)
class _Params:
    fps: float | None
    min_frames: int
    max_frames: int
    max_pixels: int | None
    min_pixels: int | None
    max_tokens: int | None
    max_frame_tokens: int | None


def _check_params(cfg, fps, min_frames, max_frames, max_pixels, min_pixels, max_tokens, max_frame_tokens):
    def positive(name, v, kind=int):
        if v is None:
            return None
        ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))
        if not ok or not math.isfinite(v) or v <= 0 or (kind is int and int(v) != v):
            raise MediaError(f"{name} must be a positive {'integer' if kind is int else 'number'}, got {v!r}")
        return kind(v)

    max_frames = positive("max_frames", cfg.max_frames if max_frames is None else max_frames)
    p = _Params(
        fps=positive("fps", fps, float),
        min_frames=positive("min_frames", min(cfg.min_frames, max_frames) if min_frames is None else min_frames),
        max_frames=max_frames,
        max_pixels=positive("max_pixels", max_pixels),
        min_pixels=positive("min_pixels", min_pixels),
        max_tokens=positive("max_tokens", max_tokens),
        max_frame_tokens=positive("max_frame_tokens", max_frame_tokens),
    )
    if p.min_frames > p.max_frames:
        raise MediaError(f"min_frames={p.min_frames} > max_frames={p.max_frames}")
    if p.min_pixels and p.max_pixels and p.min_pixels > p.max_pixels:
        raise MediaError(f"min_pixels={p.min_pixels} > max_pixels={p.max_pixels}")
    return p


def _plan(n: int, height: int, width: int, cfg, p: _Params) -> tuple[int, int, int]:
    return plan_video(n, height, width, cfg, max_tokens=p.max_tokens, max_frame_tokens=p.max_frame_tokens,
                      max_pixels=p.max_pixels, min_pixels=p.min_pixels)


def _even_indices(total: int, n: int) -> np.ndarray:
    return np.linspace(0, total - 1, n).round().astype(np.int64)  # transformers' sample_frames


def _resize(im: Image.Image, h: int, w: int, resample: int) -> np.ndarray:
    """Resize like torchvision's uint8 antialiased resize (transformers' video path): width, then height."""
    if im.width != w:
        im = im.resize((w, im.height), resample=resample)
    if im.height != h:
        im = im.resize((w, h), resample=resample)
    return np.asarray(im)


def _finish(frames: np.ndarray, times: list[float], cfg, **meta) -> Video:
    """frames [n + pad, h, w, 3] with the first n written: pad by repeating the last (frame and time)."""
    n = len(times)
    frames[n:] = frames[n - 1]
    times = times + [times[-1]] * (len(frames) - n)
    return Video(frames=frames, timestamps=np.asarray(times, np.float64), **meta)


def _frame_buffer(n: int, h: int, w: int, cfg) -> np.ndarray:
    """The kept frames' one allocation: n rounded up to a multiple of T."""
    return np.empty((n + -n % cfg.temporal_patch_size, h, w, 3), np.uint8)


def _load_frames(src, cfg, p: _Params) -> Video:
    if len(src) == 0:
        raise MediaError("video has no frames (empty list or array)")
    rate = p.fps or cfg.fps
    first = load_image(src[0])
    keep = _even_indices(len(src), min(len(src), p.max_frames))
    n, h, w = _plan(len(keep), first.height, first.width, cfg, p)
    if n < len(keep):
        keep = _even_indices(len(src), n)
    frames, times = _frame_buffer(len(keep), h, w, cfg), []
    for k, i in enumerate(keep):
        im = first if i == 0 else load_image(src[int(i)])
        frames[k] = _resize(im, h, w, cfg.resample)
        times.append(int(i) / rate)
    return _finish(frames, times, cfg, source_fps=rate, duration=len(src) / rate,
                   source_size=(first.height, first.width))


def _open(file, name: str):
    try:
        container = av.open(file, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise MediaError(f"cannot open video {name}: not a video or an unsupported container ({e})") from None
    if container.format.name == "tty":  # FFmpeg renders any .txt as ANSI-art video
        container.close()
        raise MediaError(f"cannot open video {name}: not a video (a text file)")
    if not container.streams.video:
        container.close()
        raise MediaError(f"{name} has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        codec = stream.metadata.get("codec", None) or "unknown to FFmpeg"
        container.close()
        raise MediaError(f"cannot decode video {name}: no decoder for its codec ({codec})")
    stream.thread_type = "AUTO"
    return container, stream


def _metadata(container, stream) -> tuple[float | None, float | None, int | None]:
    """(fps, duration s, frame count) from the headers; None where they do not say."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate and rate > 0 else None
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:  # some containers count the start offset in it: used for display only
        duration = container.duration / av.time_base
    return fps, duration, stream.frames or None


def _scan(container, stream, fps: float | None) -> tuple[float | None, float | None, int]:
    """Demux (no decoding) to count the frames when the header does not (Matroska, WebM, raw streams)."""
    pts = [pk.pts for pk in container.demux(stream) if pk.size and pk.pts is not None]
    if not fps and len(pts) > 1:
        span = float((max(pts) - min(pts)) * stream.time_base)
        fps = (len(pts) - 1) / span if span > 0 else None
    return fps, (len(pts) / fps if fps else None), len(pts)


def _load_file(file, name: str, cfg, p: _Params) -> Video:
    container, stream = _open(file, name)
    try:
        codec = stream.codec_context.name
        height, width = stream.codec_context.height, stream.codec_context.width
        fps_src, duration, count = _metadata(container, stream)
        if not count:
            fps_src, duration, count = _scan(container, stream, fps_src)
            container.close()
            if hasattr(file, "seek"):
                file.seek(0)
            container, stream = _open(file, name)
        if not count:
            raise MediaError(f"video {name} ({codec}) has no frames (zero-length video)")
        fps_src = fps_src or 1.0  # a lone frame
        rate = p.fps or cfg.fps
        n = int(count / fps_src * rate)
        n = min(max(n, p.min_frames), p.max_frames, count)
        if not height or not width:
            raise MediaError(f"video {name} ({codec}) does not state its frame size")
        n, h, w = _plan(n, height, width, cfg, p)
        targets = _even_indices(count, n) / fps_src
        frames, times = _frame_buffer(n, h, w, cfg), [0.0] * n
        last, copies, jobs = [None, 0], [], []  # last kept av frame and its slot; repeats; conversions
        workers = min(MAX_WORKERS, os.cpu_count() or 1)
        in_flight = threading.BoundedSemaphore(2 * workers)  # kept frames not yet converted: bounded

        def convert(k: int, frame):
            try:  # RGB conversion and PIL resizing release the GIL: they overlap decoding
                rgb = Image.fromarray(frame.to_ndarray(format="rgb24"))
                frames[k] = _resize(rgb, h, w, cfg.resample)
            finally:
                in_flight.release()

        def keep(k: int, frame, t: float):
            times[k] = t
            if last[0] is frame:  # one frame may be nearest to several targets
                copies.append((k, last[1]))
                return
            last[:] = frame, k
            in_flight.acquire()
            jobs.append(pool.submit(convert, k, frame))

        with ThreadPoolExecutor(workers) as pool:
            decoded = _decode_nearest(container, stream, targets, keep, name, codec)
            for job in jobs:
                job.result()
        for k, j in copies:
            frames[k] = frames[j]
    finally:
        container.close()
    return _finish(frames, times, cfg, source_fps=fps_src, duration=duration, source_size=(height, width),
                   decoded_frames=decoded)


def _decode_nearest(container, stream, targets: np.ndarray, keep: Callable, name: str, codec: str) -> int:
    """Decode in order, calling keep(k, frame, t) with the frame nearest targets[k]; returns frames decoded.

    Seeks forward when the next target is more than max(MIN_SEEK_GAP, 2 * widest keyframe gap seen)
    away, so a keyframe surely lies between; stops seeking if a seek ever lands behind.
    """
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else None
    k, K = 0, len(targets)
    prev, prev_t = None, -math.inf
    decoded = 0
    last_key, gop, can_seek, seek_from = None, 0.0, tb is not None, None
    packets = container.demux(stream)
    while k < K:
        for frame in _decode(stream, packets):
            t = frame.time if frame.time is not None else (prev_t + start + 1e-3 if prev is not None else 0.0)
            if start is None:
                start = t
            t -= start
            decoded += 1
            if seek_from is not None:
                can_seek, seek_from = can_seek and t > seek_from, None
            if frame.key_frame:
                if last_key is not None and t > last_key:
                    gop = max(gop, t - last_key)
                last_key = t
            while k < K and t >= targets[k]:
                near_prev = prev is not None and targets[k] - prev_t <= t - targets[k]
                keep(k, prev if near_prev else frame, prev_t if near_prev else t)
                k += 1
            prev, prev_t = frame, t
            if k < K and can_seek and gop > 0 and targets[k] - t > max(MIN_SEEK_GAP, 2 * gop):
                container.seek(int((targets[k] + start) / tb), stream=stream, backward=True, any_frame=False)
                packets, seek_from, last_key = container.demux(stream), t, None  # no gop across a jump
                break
        else:
            break  # end of stream
    if prev is None:
        raise MediaError(f"video {name} ({codec}): no decodable frame")
    while k < K:  # the stream ended before the headers said: repeat the last frame
        keep(k, prev, prev_t)
        k += 1
    return decoded


def _decode(stream, packets) -> Iterator:
    """Frames of `packets`; a packet the decoder rejects is skipped (as players do)."""
    for packet in packets:
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError:
            continue
        yield from frames


__all__ = ["Video", "VideoProcessorConfig", "load_video", "process_video", "plan_video", "smart_resize_video",
           "group_timestamps", "video_prompt_timestamps"]
