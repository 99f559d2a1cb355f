"""load / generate / stream_generate, and the CLI: `python -m qwen35_mlx.generate --model ... --prompt ...`.

`stream_generate` is the one decode loop; `generate`, the CLI and the server wrap it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx_lm.sample_utils import make_sampler

from . import memory
from .errors import GenerationError, PromptError, Qwen35Error
from .loading import load_model, resolve
from .cache import PromptCache
from .processing.prompt import MediaOptions, Processor

# Prompt tokens per prefill step, by GPU backend; elsewhere mlx-lm's 2048. On an H100 (MLX CUDA) 8192-token steps
# prefill a 32K prompt ~1.5x faster than 2048 (benchmarks/RESULTS.md). A default step the memory cannot hold is
# halved, down to 2048 (memory.prefill_chunk).
PREFILL_CHUNK = {"cuda": 8192}
DEFAULT_PREFILL_CHUNK = 2048


def default_prefill_chunk() -> int:
    from .kernels.gdn import gpu_backend  # noqa: PLC0415
    return PREFILL_CHUNK.get(gpu_backend(), DEFAULT_PREFILL_CHUNK)


def load(path_or_id, dtype=None):
    """Hub id or local directory -> (model, processor). Quantized checkpoints load as they are."""
    from mlx_lm.tokenizer_utils import load as load_tokenizer  # noqa: PLC0415

    path = resolve(path_or_id)
    model, cfg = load_model(path, dtype)
    eos = set(cfg.eos_token_ids) | set(_generation_config(path).get("eos_token_ids", []))
    tokenizer = load_tokenizer(path, eos_token_ids=sorted(eos) or None)
    return model, Processor(path, tokenizer, cfg)


def _generation_config(path: Path) -> dict:
    """Sampling defaults and EOS ids from generation_config.json (absent keys stay absent)."""
    f = Path(path) / "generation_config.json"
    try:
        g = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError):
        g = {}
    eos = g.get("eos_token_id")
    out = {"eos_token_ids": eos if isinstance(eos, list) else ([eos] if isinstance(eos, int) else [])}
    for key, name in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                      ("min_p", "min_p"), ("repetition_penalty", "repetition_penalty"),
                      ("presence_penalty", "presence_penalty")):
        if g.get(key) is not None and g.get("do_sample", True):
            out[name] = g[key]
    return out


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def validate(self):
        def bad(name, value, rule):
            raise GenerationError(f"{name}={value!r}: {rule}")
        num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not num(self.temperature) or self.temperature < 0:
            bad("temperature", self.temperature, "must be a number >= 0 (0 = greedy)")
        if not num(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", self.top_p, "must be in (0, 1] (1 = off)")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            bad("top_k", self.top_k, "must be an integer >= 0 (0 = off)")
        if not num(self.min_p) or not 0 <= self.min_p < 1:
            bad("min_p", self.min_p, "must be in [0, 1) (0 = off)")
        if not num(self.presence_penalty) or not -2 <= self.presence_penalty <= 2:
            bad("presence_penalty", self.presence_penalty, "must be in [-2, 2] (0 = off)")
        if not num(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", self.repetition_penalty, "must be > 0 (1 = off)")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            bad("seed", self.seed, "must be an integer")
        return self


class Penalties:
    """Presence penalty over the generated tokens and repetition penalty over prompt + generated tokens,
    over the whole text (not a window), via a running mask of seen token ids."""

    def __init__(self, vocab: int, prompt_ids, s: Sampling):
        self.presence, self.repetition = s.presence_penalty, s.repetition_penalty
        self.generated = mx.zeros((vocab,), mx.bool_)
        self.seen = mx.zeros((vocab,), mx.bool_)
        if self.repetition != 1.0:
            self.seen[mx.array(prompt_ids)] = True

    @property
    def active(self):
        return self.presence != 0.0 or self.repetition != 1.0

    def __call__(self, logits):
        if self.repetition != 1.0:
            pen = mx.where(logits < 0, logits * self.repetition, logits / self.repetition)
            logits = mx.where(self.seen, pen, logits)
        if self.presence != 0.0:
            logits = logits - self.presence * self.generated
        return logits

    def add(self, token):
        self.generated[token] = True
        self.seen[token] = True


@dataclass
class GenerationChunk:
    text: str                       # new text since the previous chunk (may be empty mid-character)
    token: int
    logprobs: mx.array              # [vocab] log-probabilities the token was sampled from
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory_gb: float
    finish_reason: str | None = None   # "stop" (EOS), "length" (max_tokens or context full), or None
    cached_prompt_tokens: int = 0      # prompt tokens reused from a PromptCache (not prefilled again)


def _prefill(model, cache, inputs, chunk: int, start: int = 0, on_chunk=None):
    """Run the prompt (from token `start`, the rest being in the cache already) through the model in chunks
    of `chunk` tokens, ending on multiples of `chunk`; returns the last position's logits."""
    ids = inputs["input_ids"]
    media = any(inputs.get(k) is not None for k in ("pixel_values", "pixel_values_videos", "image_grid_thw",
                                                     "video_grid_thw"))
    embeds = positions = None
    if media:                                 # vision features and 3-D positions span the whole prompt
        embeds, positions, deltas = model.embed(
            ids if start == 0 else ids[:, start:], pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"), pixel_values_videos=inputs.get("pixel_values_videos"),
            video_grid_thw=inputs.get("video_grid_thw"))
        if deltas is not None:
            cache.rope_delta = deltas[0]
    T = ids.shape[1]
    s = start
    while s < T:
        e = min(T, (s // chunk + 1) * chunk)
        if media:
            pos = None if positions is None else positions[:, :, s:e]
            h = model.hidden_states(inputs_embeds=embeds[:, s - start:e - start], position_ids=pos, cache=cache)
        else:                                 # text: embed chunk by chunk (a long prompt's embeddings add up)
            h = model.hidden_states(ids[:, s:e], cache=cache)
        if e < T:
            mx.eval(cache.state_arrays())                # bound the graph: one chunk at a time
            if on_chunk is not None:
                on_chunk()
        s = e
    return model.logits(h[:, -1:])[:, -1]


def stream_generate(model, processor: Processor, prompt, images=None, videos=None, *, max_tokens: int = 256,
                    temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                    min_p: float | None = None, presence_penalty: float | None = None,
                    repetition_penalty: float | None = None, seed: int | None = None, system: str | None = None,
                    enable_thinking: bool | None = None, chat_template: bool = True,
                    media: MediaOptions | None = None, prefill_chunk: int | None = None,
                    kv_bits: int | None = None, kv_group_size: int = 64, prompt_cache: PromptCache | None = None,
                    **media_kwargs):
    """Yield a GenerationChunk per generated token. Sampling defaults come from the checkpoint's
    generation_config.json (what the model authors recommend), else greedy. Break out of the loop to
    cancel: nothing keeps running. With `prompt_cache=PromptCache(model)`, a prompt that extends an
    earlier one (the next turn of a chat) prefills only what is new."""
    sampling = _sampling(processor, temperature, top_p, top_k, min_p, presence_penalty, repetition_penalty, seed)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise GenerationError(f"max_tokens={max_tokens!r}: must be an integer >= 0")
    if prefill_chunk is not None and (not isinstance(prefill_chunk, int) or isinstance(prefill_chunk, bool)
                                      or prefill_chunk < 1):
        raise GenerationError(f"prefill_chunk={prefill_chunk!r}: must be a positive integer (or None: the default)")
    if kv_bits not in (None, 4, 8):
        raise GenerationError(f"kv_bits={kv_bits!r}: must be 4, 8 or None")
    if kv_bits and (kv_group_size not in (32, 64, 128) or model.config.text.head_dim % kv_group_size):
        raise GenerationError(f"kv_group_size={kv_group_size!r}: must be 32, 64 or 128 and divide the head "
                              f"dim {model.config.text.head_dim}")
    media = media or MediaOptions(**media_kwargs)
    inputs = processor(prompt, images=images, videos=videos, system=system, enable_thinking=enable_thinking,
                       chat_template=chat_template, media=media)
    prompt_ids = inputs["input_ids"][0]
    n_prompt = prompt_ids.shape[0]
    context = model.config.text.max_position_embeddings
    if n_prompt > context:
        raise PromptError(f"the prompt has {n_prompt} tokens, more than the model's context of {context} tokens")
    if sampling.seed is not None:
        mx.random.seed(sampling.seed)
    sampler = make_sampler(sampling.temperature, top_p=sampling.top_p, min_p=sampling.min_p, top_k=sampling.top_k)
    penalties = Penalties(model.config.text.vocab_size, prompt_ids, sampling)
    eos = set(processor.tokenizer.eos_token_ids)
    detok = processor.tokenizer.detokenizer
    detok.reset()
    n_text_ids = len(processor.tokenizer._tokenizer)     # embedding rows past the tokenizer decode to nothing
    budget = min(max_tokens, context - n_prompt)
    start = 0
    if prompt_cache is None:
        cache = model.make_cache(kv_bits=kv_bits, kv_group_size=kv_group_size)
    else:
        if prompt_cache.model is not model:
            raise GenerationError("prompt_cache belongs to another model")
        if kv_bits is not None and (kv_bits, kv_group_size) != prompt_cache.kv:
            raise GenerationError("kv_bits/kv_group_size are set by the PromptCache; pass them to PromptCache()")
        start = prompt_cache.reuse(prompt_ids.tolist(), media=len(inputs) > 1)
        cache = prompt_cache.cache
    if prefill_chunk is None:
        prefill_chunk = memory.prefill_chunk(model, n_prompt + budget, kv_bits, kv_group_size,
                                             default_prefill_chunk(), floor=DEFAULT_PREFILL_CHUNK)
    memory.check_fits(model, n_prompt + budget, kv_bits, kv_group_size, prefill_chunk)   # where a limit is reported

    def sample(logits):
        if penalties.active:
            logits = penalties(logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return sampler(logprobs), logprobs

    mx.reset_peak_memory()
    tic = time.perf_counter()
    if budget == 0:
        return
    try:
        yield from _decode(model, cache, inputs, prefill_chunk, start, prompt_cache, budget, sample, penalties,
                           eos, detok, n_text_ids, n_prompt, tic)
    finally:
        if prompt_cache is not None:
            if len(prompt_cache.tokens) == cache.offset:
                prompt_cache.take_snapshot()
            else:                                           # interrupted mid-step: start afresh next time
                prompt_cache.reset()


def _decode(model, cache, inputs, prefill_chunk, start, prompt_cache, budget, sample, penalties, eos, detok,
            n_text_ids, n_prompt, tic):
    snap = prompt_cache.take_snapshot if prompt_cache is not None else None
    token, logprobs = sample(_prefill(model, cache, inputs, prefill_chunk, start, snap))
    mx.async_eval(token, logprobs)
    if prompt_cache is not None:
        prompt_cache.tokens = inputs["input_ids"][0].tolist()
        prompt_cache.take_snapshot()                      # the end of the prompt: the next turn extends it
    prompt_time = None
    for n in range(budget):
        if n + 1 < budget:                                  # queue the next step before reading this one
            if penalties.active:                            # else two scatters a token that nothing reads
                penalties.add(token)
            nxt, nxt_lp = sample(model(token[:, None], cache=cache)[:, -1])
            mx.async_eval(nxt, nxt_lp)
        t = token.item()
        if prompt_cache is not None and n + 1 < budget:
            prompt_cache.tokens.append(t)                   # fed to the cache above
        if prompt_time is None:
            prompt_time = time.perf_counter() - tic
            tic = time.perf_counter()
        done = t in eos
        if not done and t < n_text_ids:
            detok.add_token(t)
        finish = "stop" if done else ("length" if n + 1 == budget else None)
        if finish:
            detok.finalize()
        elapsed = max(time.perf_counter() - tic, 1e-9)
        yield GenerationChunk(text=detok.last_segment, token=t, logprobs=logprobs[0], prompt_tokens=n_prompt,
                              prompt_tps=(n_prompt - start) / max(prompt_time, 1e-9), generation_tokens=n + 1,
                              generation_tps=(n + 1) / elapsed, peak_memory_gb=mx.get_peak_memory() / 1e9,
                              finish_reason=finish, cached_prompt_tokens=start)
        if done:
            return
        if n + 1 < budget:
            token, logprobs = nxt, nxt_lp


def _sampling(processor, temperature, top_p, top_k, min_p, presence_penalty, repetition_penalty, seed) -> Sampling:
    given = dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                 presence_penalty=presence_penalty, repetition_penalty=repetition_penalty)
    defaults = {k: v for k, v in _generation_config(processor.path).items() if k in given}
    values = {k: (v if v is not None else defaults.get(k, getattr(Sampling, k))) for k, v in given.items()}
    return Sampling(**values, seed=seed).validate()


def generate(model, processor, prompt, images=None, videos=None, **kwargs) -> str:
    """The whole completion as one string (see stream_generate for the arguments)."""
    return "".join(chunk.text for chunk in stream_generate(model, processor, prompt, images, videos, **kwargs))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m qwen35_mlx.generate", description="Generate with a Qwen3.5 model.")
    p.add_argument("--model", required=True, help="hub id (e.g. Qwen/Qwen3.5-0.8B) or local checkpoint directory")
    p.add_argument("--prompt", required=True, help="the user message ('-' reads it from stdin)")
    p.add_argument("--image", action="append", default=[], help="image path or URL (repeatable)")
    p.add_argument("--video", action="append", default=[], help="video path (repeatable)")
    p.add_argument("--system", help="system prompt")
    think = p.add_mutually_exclusive_group()
    think.add_argument("--thinking", dest="thinking", action="store_true", default=None, help="enable thinking")
    think.add_argument("--no-thinking", dest="thinking", action="store_false", help="disable thinking")
    p.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temp", type=float, help="temperature (default: the checkpoint's generation_config, else 0)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--min-p", type=float)
    p.add_argument("--presence-penalty", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--fps", type=float, help="video frames sampled per second")
    p.add_argument("--min-frames", type=int)
    p.add_argument("--max-frames", type=int)
    p.add_argument("--min-pixels", type=int)
    p.add_argument("--max-pixels", type=int)
    p.add_argument("--video-max-tokens", type=int, help="budget of visual tokens per video")
    p.add_argument("--kv-bits", type=int, choices=(4, 8), help="quantize the attention KV cache")
    p.add_argument("--kv-group-size", type=int, default=64)
    p.add_argument("--prefill-chunk", type=int, default=None, help="prompt tokens per prefill step "
                   "(default: 8192 on CUDA, 2048 elsewhere; less where memory is short)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="cast unquantized weights")
    p.add_argument("--verbose", action="store_true", help="print a memory report")
    p.add_argument("--quiet", action="store_true", help="print only the generated text")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        model, processor = load(args.model, dtype=args.dtype)
        media = MediaOptions(min_pixels=args.min_pixels, max_pixels=args.max_pixels, fps=args.fps,
                             min_frames=args.min_frames, max_frames=args.max_frames,
                             video_max_tokens=args.video_max_tokens)
        last = None
        for last in stream_generate(model, processor, prompt, images=args.image, videos=args.video,
                                    max_tokens=args.max_tokens, temperature=args.temp, top_p=args.top_p,
                                    top_k=args.top_k, min_p=args.min_p, presence_penalty=args.presence_penalty,
                                    repetition_penalty=args.repetition_penalty, seed=args.seed,
                                    system=args.system, enable_thinking=args.thinking,
                                    chat_template=not args.no_chat_template, media=media,
                                    prefill_chunk=args.prefill_chunk, kv_bits=args.kv_bits,
                                    kv_group_size=args.kv_group_size):
            print(last.text, end="", flush=True)
        print()
        if last is not None and not args.quiet:
            print("=" * 10, file=sys.stderr)
            print(f"Prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tokens/s", file=sys.stderr)
            print(f"Generation: {last.generation_tokens} tokens, {last.generation_tps:.1f} tokens/s", file=sys.stderr)
            print(f"Peak memory: {last.peak_memory_gb:.3f} GB", file=sys.stderr)
            if args.verbose:
                print(memory.report(model, last.prompt_tokens + last.generation_tokens, kv_bits=args.kv_bits,
                                    kv_group_size=args.kv_group_size), file=sys.stderr)
    except Qwen35Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
