"""Video: frame choice by timestamp (each generated frame carries its index as 16 big blocks, read back
from the kept, resized frame), counts and budgets, errors, memory, and parity with transformers.

Clips are made with PyAV (libx264) once into tests/.cache/video.  Parity with transformers' Qwen3-VL
video processor: against a NumPy transcription of its math here (exact), and against the real one
when QWEN35_TV_PYTHON names a Python with torch + torchvision + transformers (it needs torchvision,
which does not import beside this venv's torch): exact on frames already at their target size;
the resampler (PIL here, torchvision's uint8 kernel there) differs by at most 2 of 255 levels.
"""

import gc
import json
import math
import os
import subprocess
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import psutil
import pytest
from PIL import Image

from qwen35_mlx.errors import ConfigError, MediaError
from qwen35_mlx.processing.video import (Video, VideoProcessorConfig, group_timestamps, load_video, plan_video,
                                         process_video, smart_resize_video, video_prompt_timestamps)

CACHE = Path(__file__).resolve().parent / ".cache" / "video"
BITS = 16


def counter_yuv(i: int, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """yuv420p planes [h*3/2, w] of frame i: its index as 2 rows x 8 white/black blocks in the top 40%,
    a grey ramp below with a moving dark square."""
    y = base.copy()
    bh, bw = int(h * 0.4) // 2, w // 8
    for b in range(BITS):
        r, c = divmod(b, 8)
        y[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 235 if (i >> b) & 1 else 16
    s = max(8, h // 6)
    x0, y0 = (i * 7) % (w - s), int(h * 0.6)
    y[y0:y0 + s, x0:x0 + s] = 30
    return y


def read_counter(frame: np.ndarray) -> int:
    """Inverse of counter_yuv on an RGB frame of any size."""
    h, w = frame.shape[:2]
    bh, bw = h * 0.4 / 2, w / 8
    value = 0
    for b in range(BITS):
        r, c = divmod(b, 8)
        cy, cx = int((r + 0.5) * bh), int((c + 0.5) * bw)
        dy, dx = max(1, int(bh / 5)), max(1, int(bw / 5))
        if frame[cy - dy:cy + dy, cx - dx:cx + dx].mean() > 128:
            value |= 1 << b
    return value


def write_clip(path: Path, seconds: float, w: int, h: int, fps: int = 30, codec: str = "libx264",
               gop: int | None = None, crf: int = 30, pts_offset: int = 0) -> None:
    base = np.full((h * 3 // 2, w), 128, np.uint8)
    base[int(h * 0.4):h] = np.linspace(60, 160, w, dtype=np.uint8)[None]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.time_base = Fraction(1, fps)
        opts = {"preset": "ultrafast", "crf": str(crf)} if codec == "libx264" else {}
        if gop:
            opts["g"] = str(gop)
        s.options = opts
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(counter_yuv(i, h, w, base), format="yuv420p")
            frame.pts, frame.time_base = i + pts_offset, Fraction(1, fps)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def clip(name: str, **kw) -> Path:
    """tests/.cache/video/<name>, written once (into a temp file, renamed into place)."""
    path = CACHE / name
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=CACHE)
        os.close(fd)
        try:
            write_clip(Path(tmp), **kw)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


@pytest.fixture(scope="module")
def clip20():
    return clip("c20s_640x360_30fps.mp4", seconds=20, w=640, h=360)


def hf_indices(total, src_fps, fps=2.0, min_frames=4, max_frames=768):
    """transformers' Qwen3VLVideoProcessor.sample_frames (plain NumPy; callable without torchvision)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    owner = SimpleNamespace(fps=fps, min_frames=min_frames, max_frames=max_frames)
    return Qwen3VLVideoProcessor.sample_frames(owner, VideoMetadata(total_num_frames=total, fps=src_fps), fps=fps)


def counters(video: Video) -> list[int]:
    return [read_counter(f) for f in video.frames]


def tokens(video: Video, cfg=VideoProcessorConfig()) -> int:
    f, (F, h, w) = cfg.factor, video.frames.shape[:3]
    return F // cfg.temporal_patch_size * (h // f) * (w // f)


# -- which frames, when --------------------------------------------------------------------------------

def test_default_sampling_is_transformers(clip20):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_resize

    v = load_video(clip20)
    idx = hf_indices(600, 30.0)
    assert len(idx) == 40 and counters(v) == idx.tolist()
    np.testing.assert_allclose(v.timestamps, idx / 30.0, rtol=0, atol=1e-12)
    assert v.frames.shape == (40, *hf_resize(40, 360, 640, 2, 32, 4096, 25165824), 3)
    assert v.source_fps == 30.0 and v.duration == pytest.approx(20.0, abs=0.05) and v.source_size == (360, 640)


@pytest.mark.parametrize("kw", [{"fps": 0.5}, {"fps": 1, "max_frames": 7}, {"fps": 0.1}, {"fps": 0.1, "min_frames": 3},
                                {"fps": 4.0}, {"fps": 0.05, "min_frames": 1, "max_frames": 1}],
                         ids=["fps0.5", "max7_odd", "min4", "min3_odd", "fps4", "one_frame"])
def test_frame_count_rules_and_padding(clip20, kw):
    v = load_video(clip20, **kw)
    idx = hf_indices(600, 30.0, kw["fps"], kw.get("min_frames", 4), kw.get("max_frames", 768)).tolist()
    n = len(idx)
    got = counters(v)
    assert len(got) == n + n % 2 and got[:n] == idx
    if n % 2:  # padded by repeating the last frame, with its timestamp
        assert got[-1] == got[-2] and v.timestamps[-1] == v.timestamps[-2]
        np.testing.assert_array_equal(v.frames[-1], v.frames[-2])
    np.testing.assert_allclose(v.timestamps[:n], np.array(idx) / 30.0, atol=1e-12)


def test_sparse_sampling_seeks_and_stays_exact():
    path = clip("c60s_640x360_gop30.mp4", seconds=60, w=640, h=360, gop=30)
    sparse = load_video(path, fps=0.1)  # 6 frames, 12 s apart: seek past ~11 s of frames each time
    assert counters(sparse) == hf_indices(1800, 30.0, 0.1).tolist()
    assert sparse.decoded_frames < 300, sparse.decoded_frames
    dense = load_video(path, fps=2, max_frames=8, max_tokens=1000)
    assert counters(dense) == hf_indices(1800, 30.0, 2, max_frames=8).tolist()


def test_mkv_without_frame_count_and_start_offset():
    """Matroska states no frame count (duration x rate is used); timestamps start at the first frame."""
    path = clip("c5s_320x240_mpeg4_offset.mkv", seconds=5, w=320, h=240, fps=25, codec="mpeg4", pts_offset=50)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0 and c.streams.video[0].start_time > 0
    v = load_video(path, fps=2)
    idx = hf_indices(125, 25.0, 2)
    assert counters(v) == idx.tolist()
    np.testing.assert_allclose(v.timestamps, idx / 25.0, atol=1e-9)


def test_bytes_and_data_url_sources(clip20):
    import base64

    data = clip20.read_bytes()
    ref = load_video(clip20, fps=0.25)
    for src in (data, "data:video/mp4;base64," + base64.b64encode(data).decode()):
        v = load_video(src, fps=0.25)
        np.testing.assert_array_equal(v.frames, ref.frames)


def test_http_url_source(clip20):
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(clip20.parent), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)  # loopback only
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        np.testing.assert_array_equal(load_video(f"{url}/{clip20.name}", fps=0.25).frames,
                                      load_video(clip20, fps=0.25).frames)
        with pytest.raises(MediaError, match="could not fetch video .*/missing.mp4: HTTP 404"):
            load_video(f"{url}/missing.mp4")
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- budgets -------------------------------------------------------------------------------------------

def test_token_budget_reduces_resolution_first(clip20):
    full = load_video(clip20)  # 40 frames at 352x640: 4400 tokens
    v = load_video(clip20, max_tokens=3000)
    assert tokens(full) == 4400 and tokens(v) <= 3000
    assert len(v.frames) == 40 and counters(v) == counters(full)  # same frames, smaller
    assert v.frames.shape[1] * v.frames.shape[2] < 352 * 640


def test_loose_budget_keeps_transformers_frames(clip20):
    v = load_video(clip20, fps=1, max_frames=7, max_tokens=100_000)  # odd count, budget not binding
    np.testing.assert_array_equal(v.frames, load_video(clip20, fps=1, max_frames=7).frames)


def test_token_budget_then_drops_frames(clip20):
    v = load_video(clip20, max_tokens=2000)  # 40 frames would fall below 128 tokens each
    assert tokens(v) <= 2000 and len(v.frames) < 40 and len(v.frames) % 2 == 0
    assert counters(v) == hf_indices(600, 30.0, fps=2, max_frames=len(v.frames)).tolist()  # still spread evenly
    assert (v.frames.shape[1] // 32) * (v.frames.shape[2] // 32) >= 0.8 * 128


@pytest.mark.parametrize("max_tokens", [1, 7, 64, 333, 5000, 100_000])
def test_token_budget_is_never_exceeded(max_tokens):
    for n, h, w in [(40, 360, 640), (7, 1080, 1920), (768, 720, 1280), (3, 50, 9000), (4, 16, 16)]:
        try:
            k, rh, rw = plan_video(n, h, w, max_tokens=max_tokens)
        except MediaError as e:  # only where even 2 frames at the smallest size do not fit
            assert "too small" in str(e) and max_tokens <= 64 and (max_tokens < 7 or max(h, w) / min(h, w) > 100)
            continue
        assert -(-k // 2) * (rh // 32) * (rw // 32) <= max_tokens and 1 <= k <= n, (n, h, w, k, rh, rw)


def test_per_frame_caps(clip20):
    v = load_video(clip20, max_frame_tokens=60)
    assert len(v.frames) == 40 and (v.frames.shape[1] // 32) * (v.frames.shape[2] // 32) <= 60
    v = load_video(clip20, max_pixels=100_000)
    assert v.frames.shape[1] * v.frames.shape[2] <= 100_000
    v = load_video(clip20, fps=0.5, min_pixels=400_000)
    assert v.frames.shape[1] * v.frames.shape[2] >= 400_000 and counters(v) == hf_indices(600, 30.0, 0.5).tolist()


def test_plan_matches_transformers_with_and_without_frame_cap():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_resize

    rng = np.random.default_rng(0)
    for _ in range(300):
        n, h, w = int(rng.integers(2, 800)), int(rng.integers(32, 4000)), int(rng.integers(32, 4000))
        if max(h, w) / min(h, w) > 200:
            continue
        assert plan_video(n, h, w) == (n, *hf_resize(n, h, w, 2, 32, 4096, 25165824))
        per_frame = max(min(768 * 1024, 25165824 // n), int(4096 * 1.05))  # cap_pixels_per_frame=True
        assert plan_video(n, h, w, max_frame_tokens=768) == (n, *hf_resize(n, h, w, 2, 32, 4096, per_frame * n))
        assert smart_resize_video(n, h, w) == hf_resize(n, h, w, 2, 32, 4096, 25165824)


# -- lists and arrays as videos ------------------------------------------------------------------------

def _rgb_frames(n, h=240, w=320):
    base = np.full((h * 3 // 2, w), 128, np.uint8)
    out = []
    for i in range(n):
        yuv = av.VideoFrame.from_ndarray(counter_yuv(i, h, w, base), format="yuv420p")
        out.append(yuv.to_ndarray(format="rgb24"))
    return out


def test_list_of_images_is_a_video(tmp_path):
    frames = _rgb_frames(5)
    paths = []
    for i, f in enumerate(frames):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(f).save(paths[-1])
    for src in (paths, [Image.fromarray(f) for f in frames], frames, np.stack(frames)):
        v = load_video(src, fps=4)
        assert counters(v) == [0, 1, 2, 3, 4, 4]
        np.testing.assert_allclose(v.timestamps, [0, 0.25, 0.5, 0.75, 1.0, 1.0])
        assert v.source_fps == 4 and v.frames.shape[1:] == (*smart_resize_video(5, 240, 320), 3)
    v = load_video(frames, max_frames=3)  # evenly subsampled, timestamps at cfg.fps (2)
    assert counters(v) == [0, 2, 4, 4] and v.timestamps.tolist() == [0, 1, 2, 2]


# -- processing and parity -----------------------------------------------------------------------------

def hf_transcription(frames: np.ndarray, patch=16, merge=2, temporal=2) -> tuple[np.ndarray, list]:
    """transformers' Qwen3-VL video `rescale_and_normalize` (fused, float32) + `patchify`, in NumPy."""
    mean = np.float32(0.5) * np.float32(1 / (1 / 255))
    std = np.float32(0.5) * np.float32(1 / (1 / 255))
    x = (frames.transpose(0, 3, 1, 2).astype(np.float32) - mean) / std  # [F, C, H, W]
    if pad := -len(x) % temporal:
        x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
    F, C, H, W = x.shape
    gt, gh, gw = F // temporal, H // patch, W // patch
    x = x.reshape(1, gt, temporal, C, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(gt * gh * gw, C * temporal * patch * patch), [gt, gh, gw]


def test_process_video_equals_transformers_math():
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 64, 96, 3), dtype=np.uint8)
    idx = [0, 7, 15, 22, 29]
    v = Video(frames=frames, timestamps=np.array(idx) / 30.0, source_fps=30.0, duration=1.0, source_size=(64, 96))
    pv, grid, ts = process_video(v)
    ref, ref_grid = hf_transcription(frames)
    assert pv.dtype == np.float32 and grid.dtype == np.int64 and pv.shape == (3 * 4 * 6, 1536)
    assert grid.tolist() == [ref_grid] and float(np.abs(pv - ref).max()) == 0.0
    hf_ts = Qwen3VLProcessor._calculate_timestamps(None, list(idx), 30.0, 2)
    assert ts == hf_ts and ts[0] == (0 + 7 / 30) / 2 and ts[-1] == 29 / 30  # mean of each pair; last padded
    assert video_prompt_timestamps(ts) == [f"<{t:.1f} seconds>" for t in hf_ts] == \
        ["<0.1 seconds>", "<0.6 seconds>", "<1.0 seconds>"]
    assert group_timestamps([0.0, 1.0, 2.0, 3.0]) == [0.5, 2.5]


def test_planted_bug_in_temporal_order_is_caught():
    frames = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    v = Video(frames=frames[[1, 0, 2, 3]], timestamps=np.arange(4.0), source_fps=1.0, duration=4.0,
              source_size=(32, 32))
    ref, _ = hf_transcription(frames)
    assert np.abs(process_video(v)[0] - ref).max() > 0.5


_HF_VIDEO = """
import json, sys, warnings
import numpy as np
warnings.simplefilter("ignore")
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
src, dst, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
vp = Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 25165824}, image_mean=[0.5] * 3,
                           image_std=[0.5] * 3)
data, out = np.load(src), {}
for name in data.files:
    r = vp(videos=[data[name]], do_sample_frames=False, return_tensors="np", **kw)
    out[name + "/pv"], out[name + "/grid"] = r["pixel_values_videos"], r["video_grid_thw"]
np.savez(dst, **out)
"""


@pytest.mark.skipif(not os.environ.get("QWEN35_TV_PYTHON"), reason="QWEN35_TV_PYTHON (torch+torchvision) not set")
@pytest.mark.parametrize("cap", [False, True], ids=["uncapped", "cap_pixels_per_frame"])
def test_parity_with_real_transformers_video_processor(tmp_path, cap):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:333, 0:517]
    smooth = (127 + 100 * np.sin(x / 20.0) * np.cos(y / 15.0)).astype(np.uint8)
    smooth = np.stack([smooth, smooth[::-1], 255 - smooth], -1)
    # name: (frames, allowed max diff in 2/255 units, i.e. uint8 levels after normalisation). Measured:
    # 0 for the first two, 2 levels on 0.23% / 0.43% of values for smooth / noise, 1 level for tiny_3.
    cases = {
        "at_target_size_odd": (rng.integers(0, 256, (5, 320, 512, 3), dtype=np.uint8), 0),
        "counter_7": (np.stack(_rgb_frames(7, 360, 640)), 2),
        "smooth_6": (np.stack([np.roll(smooth, 5 * i, 1) for i in range(6)]), 2),
        "noise_4": (rng.integers(0, 256, (4, 333, 517, 3), dtype=np.uint8), 2),
        "tiny_3": (rng.integers(0, 256, (3, 20, 50, 3), dtype=np.uint8), 2),
    }
    np.savez(tmp_path / "in.npz", **{k: v for k, (v, _) in cases.items()})
    subprocess.run([os.environ["QWEN35_TV_PYTHON"], "-c", _HF_VIDEO, str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npz"), json.dumps({"cap_pixels_per_frame": cap})], check=True, timeout=300)
    ref = np.load(tmp_path / "out.npz")
    for name, (frames, levels) in cases.items():
        pv, grid, _ = process_video(load_video(frames, max_frame_tokens=768 if cap else None))
        np.testing.assert_array_equal(grid, ref[name + "/grid"], err_msg=name)
        diff = float(np.abs(pv - ref[name + "/pv"]).max())
        assert diff <= levels * (2 / 255) + 1e-6, f"{name}: max abs diff {diff:.4f}"


# -- errors --------------------------------------------------------------------------------------------

def _no_decodable_frame(path: Path) -> Path:
    write_clip(path.with_suffix(".ok.mkv"), seconds=1, w=64, h=48, fps=10, codec="mpeg4")
    data = path.with_suffix(".ok.mkv").read_bytes().replace(b"\x00\x00\x01\xb6", b"\x00\x00\x00\x00")  # no VOPs
    path.write_bytes(data)
    return path


def _unknown_codec(path: Path) -> Path:
    write_clip(path.with_suffix(".ok.mkv"), seconds=1, w=64, h=48, fps=10, codec="mpeg4")
    data = path.with_suffix(".ok.mkv").read_bytes()
    assert data.count(b"V_MPEG4/ISO/ASP") == 1
    path.write_bytes(data.replace(b"V_MPEG4/ISO/ASP", b"V_QWEN35/XX/YYY"))
    return path


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for p in s.encode(frame):
            c.mux(p)
    return path


def test_file_errors(tmp_path, clip20):
    (tmp_path / "notes.txt").write_text("not a video at all\n" * 50)
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "cut.mp4").write_bytes(clip20.read_bytes()[: clip20.stat().st_size // 2])  # moov is at the end
    (tmp_path / "empty.y4m").write_text("YUV4MPEG2 W64 H48 F10:1 Ip A1:1 C420jpeg\n")
    cases = [
        (tmp_path / "missing.mp4", "video file not found: .*missing.mp4"),
        (tmp_path, "not a file"),
        (tmp_path / "notes.txt", "cannot open video .*notes.txt: not a video"),
        (tmp_path / "random.mp4", "cannot open video .*random.mp4: not a video"),
        (tmp_path / "cut.mp4", "cannot open video .*cut.mp4"),
        (_audio_only(tmp_path / "audio.wav"), "audio.wav has no video stream"),
        (_unknown_codec(tmp_path / "unknown.mkv"), "unknown.mkv: no decoder for its codec"),
        (tmp_path / "empty.y4m", r"empty.y4m \(rawvideo\) has no frames \(zero-length video\)"),
        (_no_decodable_frame(tmp_path / "broken.mkv"), r"broken.mkv \(mpeg4\): no decodable frame"),
        (b"\x00" * 100, r"cannot open video video bytes \(100 bytes\)"),
        ("data:image/png;base64,AAAA", "unsupported data URL"),
        ([], "no frames"),
        (12, "unsupported video input of type int"),
    ]
    for src, pattern in cases:
        with pytest.raises(MediaError, match=pattern):
            load_video(src)


@pytest.mark.parametrize("kw,pattern", [
    ({"fps": 0}, "fps must be a positive number, got 0"), ({"fps": -2.0}, "fps"), ({"fps": math.nan}, "fps"),
    ({"fps": "2"}, "fps"), ({"min_frames": 0}, "min_frames"), ({"max_frames": 2.5}, "max_frames"),
    ({"min_frames": 9, "max_frames": 4}, "min_frames=9 > max_frames=4"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_frame_tokens": -3}, "max_frame_tokens"),
    ({"min_pixels": 10, "max_pixels": 5}, "min_pixels=10 > max_pixels=5"),
])
def test_bad_parameters(clip20, kw, pattern):
    with pytest.raises(MediaError, match=pattern):
        load_video(clip20, **kw)


def test_budget_too_small_for_one_patch():
    assert tokens(load_video(np.zeros((2, 360, 640, 3), np.uint8), max_tokens=1)) == 1  # one 32x32 patch
    with pytest.raises(MediaError, match="max_tokens=2 is too small .* 40x4000 frames needs 14 tokens"):
        load_video(np.zeros((2, 40, 4000, 3), np.uint8), max_tokens=2)


def test_aspect_ratio_error_names_the_size():
    with pytest.raises(MediaError, match="40x9000 .* aspect ratio 225.0"):
        load_video(np.zeros((2, 40, 9000, 3), np.uint8))


def test_video_config(tmp_path):
    hub = {"fps": 2, "min_frames": 4, "max_frames": 768, "merge_size": 2, "patch_size": 16, "temporal_patch_size": 2,
           "size": {"longest_edge": 25165824, "shortest_edge": 4096}, "image_mean": [0.5] * 3,
           "image_std": [0.5] * 3, "resample": 3, "rescale_factor": 1 / 255, "do_sample_frames": True,
           "video_processor_type": "Qwen3VLVideoProcessor"}
    assert VideoProcessorConfig.from_dict(hub) == VideoProcessorConfig()
    assert VideoProcessorConfig.from_dir(tmp_path) == VideoProcessorConfig()  # absent: hub values, 2 fps
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({**hub, "fps": 1.5, "max_frames": 64}))
    cfg = VideoProcessorConfig.from_dir(tmp_path)
    assert cfg.fps == 1.5 and cfg.max_frames == 64 and cfg.extra["do_sample_frames"] is True
    with pytest.raises(ConfigError, match="min_frames=9 > max_frames=4"):
        VideoProcessorConfig.from_dict({"min_frames": 9, "max_frames": 4})
    with pytest.raises(ConfigError, match="fps"):
        VideoProcessorConfig.from_dict({"fps": 0})


# -- memory --------------------------------------------------------------------------------------------

def _peak_rss_growth(fn) -> tuple[int, object]:
    """Peak RSS above the starting RSS while fn runs (sampled every 2 ms), and fn's result."""
    proc = psutil.Process()
    gc.collect()
    start, peak, done = proc.memory_info().rss, [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    t = threading.Thread(target=watch)
    t.start()
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    return max(peak[0], proc.memory_info().rss) - start, out


def test_memory_is_bounded_by_kept_frames_not_length():
    """1080p, 10 s vs 60 s (150 vs 900 frames decoded), 8 frames kept at 1088x1920 (50 MB): the peak
    RSS growth is the same, kept frames + decoder + one RGB frame; measured 80-120 MB for either
    (allocator noise: the least of two runs is compared).  All 900 frames in RGB would be 5.6 GB."""
    short = clip("c10s_1920x1080_15fps.mp4", seconds=10, w=1920, h=1080, fps=15, crf=40)
    long = clip("c60s_1920x1080_15fps.mp4", seconds=60, w=1920, h=1080, fps=15, crf=40)
    load_video(short, max_frames=8)  # warm up: codec, thread pool, allocator arenas
    grow = {}
    for name, path in [("short", short), ("long", long)] * 2:
        g, v = _peak_rss_growth(lambda: load_video(path, max_frames=8))
        grow[name] = min(grow.get(name, g), g)
        if name == "long":
            assert v.decoded_frames == 900 and v.frames.shape == (8, 1088, 1920, 3)
            assert counters(v) == hf_indices(900, 15.0, max_frames=8).tolist()
        del v
    mb = 1 << 20
    assert grow["long"] < 200 * mb, f"peak RSS growth {grow['long'] / mb:.0f} MB"
    assert grow["long"] < grow["short"] + 64 * mb, f"long {grow['long'] / mb:.0f} MB, short {grow['short'] / mb:.0f} MB"
