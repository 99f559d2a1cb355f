"""Prompt assembly: chat template, media placeholders expanded to their token counts, model inputs.

`Processor(messages, images=..., videos=...)` returns the dict `model(...)` takes. Messages follow the
Hugging Face chat format; image/video parts may carry their source (`{"type": "image", "image": path}`)
or take the next entry of `images=` / `videos=` in order. Placeholders are expanded exactly as
transformers' Qwen3-VL processor does: each `<|image_pad|>` becomes t*h*w/merge^2 pads; each
`<|video_pad|>` becomes, per temporal patch, `<{t:.1f} seconds><|vision_start|>` + pads + `<|vision_end|>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..errors import PromptError

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


@dataclass
class MediaOptions:
    """Per-call overrides of the checkpoint's image/video processor settings (None = checkpoint default)."""
    min_pixels: int | None = None
    max_pixels: int | None = None
    fps: float | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    video_max_tokens: int | None = None
    video_max_frame_tokens: int | None = None


class Processor:
    """Tokenizer + chat template + image/video preprocessing for one checkpoint."""

    def __init__(self, path: Path, tokenizer, config):
        self.path = Path(path)
        self.tokenizer = tokenizer                  # mlx_lm TokenizerWrapper (HF tokenizer inside)
        self.config = config
        self._image_cfg = self._video_cfg = None

    # -- media -------------------------------------------------------------------------------------
    @property
    def image_config(self):
        if self._image_cfg is None:
            from .media_config import ImageProcessorConfig  # noqa: PLC0415
            self._image_cfg = ImageProcessorConfig.from_dir(self.path)
        return self._image_cfg

    @property
    def video_config(self):
        if self._video_cfg is None:
            from .media_config import VideoProcessorConfig  # noqa: PLC0415
            self._video_cfg = VideoProcessorConfig.from_dir(self.path)
        return self._video_cfg

    def _images(self, images, opts: MediaOptions):
        from .image import load_image, process_images  # noqa: PLC0415
        pixels, grid = process_images([load_image(i) for i in images], self.image_config,
                                      min_pixels=_floor(opts, self.image_config.min_pixels),
                                      max_pixels=opts.max_pixels)
        return pixels, grid

    def _videos(self, videos, opts: MediaOptions):
        from .video import load_video, process_video  # noqa: PLC0415
        pixels, grids, stamps = [], [], []
        for v in videos:
            video = load_video(v, fps=opts.fps, min_frames=opts.min_frames, max_frames=opts.max_frames,
                               min_pixels=_floor(opts, None), max_pixels=opts.max_pixels,
                               max_tokens=opts.video_max_tokens, max_frame_tokens=opts.video_max_frame_tokens,
                               cfg=self.video_config)
            p, g, ts = process_video(video, self.video_config)
            pixels.append(p)
            grids.append(np.asarray(g).reshape(-1, 3))
            stamps.append(ts)
        return np.concatenate(pixels), np.concatenate(grids), stamps

    # -- text --------------------------------------------------------------------------------------
    def render(self, messages, *, system=None, add_generation_prompt=True, enable_thinking=None,
               chat_template=True) -> str:
        """The prompt text with one placeholder per image/video (before expansion)."""
        if isinstance(messages, str):
            if not chat_template:
                return messages
            messages = [{"role": "user", "content": messages}]
        elif not chat_template:
            raise PromptError("chat_template=False takes a plain string prompt, not a list of messages")
        messages = list(messages)
        if system is not None:
            messages = [{"role": "system", "content": system}] + [m for m in messages if m.get("role") != "system"]
        kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        hf = self.tokenizer._tokenizer if hasattr(self.tokenizer, "_tokenizer") else self.tokenizer
        if getattr(hf, "chat_template", None) is None:
            raise PromptError(f"{self.path}: the checkpoint has no chat template; pass chat_template=False "
                              "(CLI: --no-chat-template) with a raw prompt")
        return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                      **kwargs)

    def __call__(self, prompt, images=None, videos=None, *, system=None, add_generation_prompt=True,
                 enable_thinking=None, chat_template=True, media: MediaOptions | None = None,
                 **media_kwargs) -> dict:
        """prompt: a string or chat messages. Returns input_ids [1, T] and the vision tensors, as mx.arrays.
        Media settings come as `media=MediaOptions(...)` or as its fields (fps=2.0, max_pixels=...)."""
        opts = media or MediaOptions(**media_kwargs)
        images, videos = list(images or []), list(videos or [])
        if not isinstance(prompt, str):
            prompt, images, videos = _take_inline_media(prompt, images, videos)
        text = self.render(prompt, system=system, add_generation_prompt=add_generation_prompt,
                           enable_thinking=enable_thinking, chat_template=chat_template)
        n_img, n_vid = text.count(IMAGE_PAD), text.count(VIDEO_PAD)
        if isinstance(prompt, str) and chat_template and (images or videos) and not (n_img or n_vid):
            text = self.render([{"role": "user", "content": [*({"type": "image"} for _ in images),
                                                             *({"type": "video"} for _ in videos),
                                                             {"type": "text", "text": prompt}]}],
                               system=system, add_generation_prompt=add_generation_prompt,
                               enable_thinking=enable_thinking)
            n_img, n_vid = text.count(IMAGE_PAD), text.count(VIDEO_PAD)
        if n_img != len(images) or n_vid != len(videos):
            raise PromptError(f"the prompt has {n_img} image and {n_vid} video placeholders, but "
                              f"{len(images)} image(s) and {len(videos)} video(s) were given")
        if (images or videos) and self.config.vision is None:
            raise PromptError(f"{self.path}: this checkpoint has no vision tower: it cannot take images or videos")
        out = {}
        merge = self.config.vision.spatial_merge_size ** 2 if self.config.vision else 4
        if images:
            pixels, grid = self._images(images, opts)
            counts = [int(np.prod(g)) // merge for g in grid]
            text = _expand(text, IMAGE_PAD, [IMAGE_PAD * n for n in counts])
            out.update(pixel_values=mx.array(pixels), image_grid_thw=mx.array(grid))
        if videos:
            pixels, grid, stamps = self._videos(videos, opts)
            reps = [_video_text(g, ts, merge) for g, ts in zip(grid, stamps)]
            text = _expand(text, VIDEO_PAD, reps)
            out.update(pixel_values_videos=mx.array(pixels), video_grid_thw=mx.array(grid))
        ids = np.array([self.tokenizer.encode(text, add_special_tokens=False)], np.int32)
        out["input_ids"] = mx.array(ids)
        if images or videos:                      # what transformers' forward needs beside the grids
            kinds = (ids == self.config.image_token_id) * 1 + (ids == self.config.video_token_id) * 2
            out["mm_token_type_ids"] = mx.array(kinds.astype(np.int32))
        return out

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))


def _floor(opts: MediaOptions, default_min):
    """A max_pixels below the checkpoint's min_pixels lowers the minimum with it (asking for small images
    should not be an error); an explicit min_pixels is kept as given."""
    if opts.min_pixels is None and opts.max_pixels is not None and default_min is not None \
            and opts.max_pixels < default_min:
        return opts.max_pixels
    return opts.min_pixels


def _video_text(grid, stamps, merge) -> str:
    t, h, w = (int(x) for x in grid)
    pads = VIDEO_PAD * (h * w // merge)
    return "".join(f"<{stamps[i]:.1f} seconds>{VISION_START}{pads}{VISION_END}" for i in range(t))


def _expand(text: str, token: str, replacements: list[str]) -> str:
    parts = text.split(token)
    out = [parts[0]]
    for rep, rest in zip(replacements, parts[1:]):
        out += [rep, rest]
    return "".join(out)


def _take_inline_media(messages, images, videos):
    """Media given inside message parts ({"type": "image", "image": src}) join the explicit lists in prompt
    order; parts without a source take the next explicit one."""
    given_img, given_vid = iter(images), iter(videos)
    out_img, out_vid, out_msgs = [], [], []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image":
                    src = part.get("image", part.get("url", part.get("path")))
                    out_img.append(src if src is not None else next(given_img, None))
                elif kind == "video":
                    src = part.get("video", part.get("url", part.get("path")))
                    out_vid.append(src if src is not None else next(given_vid, None))
        out_msgs.append(m)
    out_img += list(given_img)
    out_vid += list(given_vid)
    if any(x is None for x in out_img) or any(x is None for x in out_vid):
        n_img = sum(1 for m in messages if isinstance(m.get("content"), list)
                    for p in m["content"] if isinstance(p, dict) and p.get("type") == "image")
        n_vid = sum(1 for m in messages if isinstance(m.get("content"), list)
                    for p in m["content"] if isinstance(p, dict) and p.get("type") == "video")
        raise PromptError(f"the messages have {n_img} image and {n_vid} video parts, but only "
                          f"{len(images)} image(s) and {len(videos)} video(s) were given")
    return out_msgs, out_img, out_vid
