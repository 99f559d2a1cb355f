"""Images and video through the public processor and model, against transformers (float32).

Measured relative logits errors: image 1.2e-5, video ~1e-5, image + video ~1.5e-5 (the chunk-wise GDN scan
on near-parallel image keys is the largest term); greedy step logits after an image ~1e-5. Threshold 2e-4.
"""

import mlx.core as mx
import numpy as np
import pytest

from helpers import assert_rel_close, hf_greedy, hf_logits, load_hf
from qwen35_mlx import PromptError, load, stream_generate

TOL = 2e-4


@pytest.fixture(scope="module", params=["dense_vl_path", "moe_vl_path"], ids=["dense", "moe"])
def vl(request):
    path = request.getfixturevalue(request.param)
    model, proc = load(path, dtype="float32")
    return model, proc, load_hf(path)


def image(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def frames(seed, n, h=64, w=96):
    """A moving bright square on noise, so frames differ but are related, as in a real clip."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        f[10:30, 5 + 8 * i:25 + 8 * i] = 230
        out.append(f)
    return out


def hf_kwargs(inputs):
    return {k: np.array(v) for k, v in inputs.items() if k != "input_ids"}


def check(model, hf, inputs, name):
    ref = hf_logits(hf, np.array(inputs["input_ids"]), **hf_kwargs(inputs))
    assert_rel_close(model(**inputs), ref, TOL, name)


def test_image_prompt(vl):
    model, proc, hf = vl
    inputs = proc("What is in the picture?", images=[image(0, 70, 100)])
    assert int(mx.sum(inputs["input_ids"] == model.config.image_token_id)) == \
        int(np.prod(np.array(inputs["image_grid_thw"]))) // 4
    check(model, hf, inputs, "image prompt")


def test_two_images_in_messages(vl):
    model, proc, hf = vl
    messages = [{"role": "user", "content": [{"type": "image", "image": image(1, 40, 90)},
                                             {"type": "text", "text": "and"},
                                             {"type": "image", "image": image(2, 100, 64)},
                                             {"type": "text", "text": "Compare them."}]}]
    inputs = proc(messages)
    assert inputs["image_grid_thw"].shape == (2, 3)
    check(model, hf, inputs, "two images")


def test_video_prompt_with_timestamps(vl):
    model, proc, hf = vl
    inputs = proc("What happens?", videos=[frames(3, 6)], fps=2.0)
    t = int(inputs["video_grid_thw"][0, 0])
    assert t == 3
    text = proc.tokenizer.decode(np.array(inputs["input_ids"][0]).tolist())
    assert "<0.2 seconds>" in text and "<1.2 seconds>" in text and "<2.2 seconds>" in text
    check(model, hf, inputs, "video prompt")


def test_image_and_video_in_one_prompt(vl):
    model, proc, hf = vl
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "then"},
                                             {"type": "image"}, {"type": "text", "text": "explain"}]}]
    inputs = proc(messages, images=[image(4, 64, 64)], videos=[frames(5, 4)])
    check(model, hf, inputs, "image + video")


def test_greedy_after_image_uses_rope_delta(vl):
    """10+ greedy tokens with the cache after an image: a missing rope delta breaks these."""
    model, proc, hf = vl
    inputs = proc("Describe it.", images=[image(6, 96, 64)])
    n = 12
    ref = hf_greedy(hf, np.array(inputs["input_ids"]), n, **hf_kwargs(inputs))[0].tolist()
    cache = model.make_cache()
    logits = model(**inputs, cache=cache)[:, -1]
    assert cache.rope_delta < 0                                   # images compress positions
    ours = []
    for _ in range(n):
        tok = int(mx.argmax(logits, axis=-1).item())
        ours.append(tok)
        logits = model(mx.array([[tok]]), cache=cache)[:, -1]
    assert ours == ref


def test_generation_runs_the_vision_tower_once(vl):
    model, proc, _ = vl
    calls = []
    visual = model.model.visual
    original = type(visual).__call__
    type(visual).__call__ = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    try:
        chunks = list(stream_generate(model, proc, "Describe.", images=[image(7, 64, 64)], max_tokens=8,
                                      temperature=0.0))
    finally:
        type(visual).__call__ = original
    assert len(chunks) >= 1 and len(calls) == 1


def test_placeholder_and_media_counts_must_match(vl):
    _, proc, _ = vl
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]}]
    with pytest.raises(PromptError, match="2 image"):
        proc(two, images=[image(8, 64, 64)])
    one = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    with pytest.raises(PromptError, match="1 image"):
        proc(one, images=[image(8, 64, 64), image(9, 64, 64)])


def test_small_max_pixels_lowers_the_minimum(vl):
    """Asking for fewer pixels than the checkpoint's min_pixels shrinks the image instead of failing."""
    _, proc, _ = vl
    inputs = proc("?", images=[image(10, 300, 300)], max_pixels=64 * 64)
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]                 # 64x64 px: 4 tokens
