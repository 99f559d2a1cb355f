"""Image loading and preprocessing: parity with transformers' Qwen2-VL image processor (PIL backend,
the one AutoImageProcessor picks without torchvision), every loader input, every error path.

Parity is exact: the measured max abs diff is 0.0 on every case below, so the tests assert equality.
"""

import base64
import http.server
import io
import json
import socket
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from qwen35_mlx.errors import ConfigError, MediaError
from qwen35_mlx.processing.image import (ImageProcessorConfig, load_image, normalize_lut, patchify,
                                         process_images, smart_resize)

HUB = {  # Qwen3.5 preprocessor_config.json as published
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "image_processor_type": "Qwen2VLImageProcessor",
    "merge_size": 2, "patch_size": 16, "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "temporal_patch_size": 2,
    "processor_class": "Qwen3VLProcessor",
}


@pytest.fixture(scope="module")
def hf():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**{k: v for k, v in HUB.items() if not k.endswith(("_type", "_class"))})


def hf_process(hf, image, min_pixels=None, max_pixels=None):
    kw = {}
    if min_pixels or max_pixels:
        kw["size"] = {"shortest_edge": min_pixels or hf.size.shortest_edge,
                      "longest_edge": max_pixels or hf.size.longest_edge}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = hf(images=[image], return_tensors="np", **kw)
    return r["pixel_values"], r["image_grid_thw"]


def assert_same(ours, ref, name):
    (pv, grid), (rpv, rgrid) = ours, ref
    assert grid.dtype == np.int64 and pv.dtype == np.float32, name
    np.testing.assert_array_equal(grid, rgrid, err_msg=f"{name}: image_grid_thw")
    assert pv.shape == rpv.shape, f"{name}: {pv.shape} vs {rpv.shape}"
    diff = float(np.abs(pv - rpv).max())
    assert diff == 0.0, f"{name}: max abs diff {diff:.3e}"


def rng_image(h, w, c=3, seed=0):
    """Smooth gradients + noise + a hard edge: exercises bicubic overshoot and clipping."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 90 * np.sin(x / 17.0)[..., None] * np.cos(y / 11.0)[..., None] * np.ones(c)
    img = np.clip(base + rng.normal(0, 25, (h, w, c)), 0, 255).astype(np.uint8)
    img[h // 3: h // 2, w // 4: w // 2] = 255
    return img


CASES = {
    "rgb_333x517": lambda: Image.fromarray(rng_image(333, 517)),
    "gray_L": lambda: Image.fromarray(rng_image(200, 300, 1)[..., 0], "L"),
    "rgba_alpha": lambda: Image.fromarray(rng_image(150, 260, 4), "RGBA"),
    "la_alpha": lambda: Image.fromarray(rng_image(150, 260, 4), "RGBA").convert("LA"),
    "palette_P": lambda: Image.fromarray(rng_image(180, 120)).convert("P", palette=Image.Palette.ADAPTIVE),
    "palette_P_transparency": lambda: _p_with_transparency(),
    "cmyk": lambda: Image.fromarray(rng_image(100, 140, 4), "CMYK"),
    "tiny_10x10_min_pixels": lambda: Image.fromarray(rng_image(10, 10)),
    "array_hwc_uint8": lambda: rng_image(97, 211),
    "array_hw_gray": lambda: rng_image(97, 211, 1)[..., 0],
    "array_rgba": lambda: rng_image(97, 211, 4),
}


def _p_with_transparency():
    im = Image.fromarray(rng_image(120, 90)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    im.info["transparency"] = 3
    return im


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_transformers(hf, name):
    image = CASES[name]()
    ref_input = image[..., None] if name == "array_hw_gray" else image  # transformers takes no 2-D arrays
    assert_same(process_images([image]), hf_process(hf, ref_input), name)


@pytest.mark.parametrize("lo,hi", [(100_000, 200_000), (65536, 1_003_520), (300_000, 300_000), (4096, 50_000)],
                         ids=["band", "max_1M", "lo_eq_hi", "small"])
def test_parity_pixel_overrides(hf, lo, hi):
    image = Image.fromarray(rng_image(333, 517))
    assert_same(process_images([image], min_pixels=lo, max_pixels=hi), hf_process(hf, image, lo, hi), f"{lo}-{hi}")


def test_parity_large_jpeg_hits_max_pixels(hf, tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(rng_image(2000, 3000)).save(path, quality=90)
    from transformers.image_utils import load_image as hf_load

    ours = process_images([str(path)], max_pixels=1_000_000)
    assert_same(ours, hf_process(hf, hf_load(str(path)), max_pixels=1_000_000), "jpeg_3000x2000")
    t, h, w = ours[1][0]
    assert (h * 16) * (w * 16) <= 1_000_000 and (h, w) == (50, 76)


def test_parity_batch_of_mixed_sizes(hf):
    images = [CASES[k]() for k in ("rgb_333x517", "gray_L", "tiny_10x10_min_pixels")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = hf(images=images, return_tensors="np")
    assert_same(process_images(images), (r["pixel_values"], r["image_grid_thw"]), "batch")


def test_sixteen_bit_png_is_scaled_not_clipped(hf, tmp_path):
    """transformers lets Pillow clip I;16 at 255 (a 16-bit photo turns white); we scale by 1/257 and
    then match transformers on that 8-bit image exactly."""
    ramp = (np.linspace(0, 65535, 240 * 320).reshape(240, 320)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    im16 = Image.open(path)
    assert im16.mode.startswith("I;16")
    ours = load_image(path)
    expect = np.round(ramp / 257).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(ours)[..., 0], expect)
    assert_same(process_images([path]), hf_process(hf, Image.fromarray(expect).convert("RGB")), "i16_scaled")
    hf_raw, _ = hf_process(hf, im16)
    assert (hf_raw == 1.0).mean() > 0.9  # the transformers behaviour we do not copy: clipped to white


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_resize

    rng = np.random.default_rng(1)
    sizes = [(333, 517), (10, 10), (2000, 3000), (48, 48), (16, 1000), (1000, 16), (4000, 4000), (37, 7000)]
    sizes += [tuple(int(x) for x in rng.integers(1, 5000, 2)) for _ in range(300)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            continue
        for lo, hi in ((65536, 16777216), (4096, 50_000), (200_000, 200_000)):
            assert smart_resize(h, w, 32, lo, hi) == hf_resize(h, w, 32, lo, hi), (h, w, lo, hi)


@pytest.mark.parametrize("shape", [(1, 4000), (4000, 1)], ids=["1x4000", "4000x1"])
def test_aspect_ratio_error_names_the_size(hf, shape):
    image = Image.fromarray(np.full(shape + (3,), 128, np.uint8))
    with pytest.raises(MediaError, match=f"{shape[0]}x{shape[1]}.*aspect ratio 4000.0"):
        process_images([image])
    with pytest.raises(ValueError, match="aspect ratio"):  # transformers refuses it too
        hf_process(hf, image)


def test_planted_bug_patch_order_is_caught(hf):
    """The parity check sees a merge-block order mistake (w-in-block before h-in-block)."""
    im = Image.fromarray(rng_image(256, 384))  # already a valid size: no resize
    ref, _ = hf_process(hf, im)
    frame = np.asarray(im)[None]
    good = patchify(frame, normalize_lut(ImageProcessorConfig(), False), 16, 2, 2)
    bad = good.reshape(-1, 2, 2, 1536).transpose(0, 2, 1, 3).reshape(-1, 1536)
    assert np.abs(good - ref).max() == 0.0 and np.abs(bad - ref).max() > 0.5


# -- loader inputs -----------------------------------------------------------------------------------

def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local HTTP server (loopback only) serving one PNG; stops with the module."""
    root = tmp_path_factory.mktemp("www")
    (root / "x.png").write_bytes(_png_bytes(rng_image(40, 60)))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_every_input_type_gives_the_same_image(tmp_path, server):
    img = rng_image(40, 60)
    path = tmp_path / "x.png"
    path.write_bytes(_png_bytes(img))
    data_url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    sources = {
        "str": str(path), "Path": path, "file://": f"file://{path}", "bytes": path.read_bytes(),
        "bytearray": bytearray(path.read_bytes()), "data_url": data_url, "http": f"{server}/x.png",
        "PIL": Image.fromarray(img), "array": img, "array_chw": img.transpose(2, 0, 1),
        "array_float01": img / 255.0, "array_float255": img.astype(np.float32),
    }
    for name, src in sources.items():
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (60, 40), name
        np.testing.assert_array_equal(np.asarray(out), img, err_msg=name)


def test_array_dtypes_and_channels():
    gray = rng_image(20, 30, 1)
    np.testing.assert_array_equal(np.asarray(load_image(gray)), np.repeat(gray, 3, -1))
    np.testing.assert_array_equal(np.asarray(load_image(gray[..., 0] > 128))[..., 0], (gray[..., 0] > 128) * 255)
    np.testing.assert_array_equal(np.asarray(load_image(gray.astype(np.uint16) * 257))[..., 0], gray[..., 0])
    rgba = rng_image(20, 30, 4)
    a = rgba[..., 3:] / 255
    expect = np.round(a * rgba[..., :3] + (1 - a) * 255).astype(np.uint8)  # over white, as transformers
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), expect)


def test_pil_modes_composite_alpha_on_white():
    im = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent: white, not the hidden colour
    assert np.asarray(load_image(im)).tolist() == np.full((4, 4, 3), 255).tolist()
    assert load_image(Image.new("LA", (3, 3), (50, 255))).getpixel((0, 0)) == (50, 50, 50)
    for mode in ("1", "L", "P", "RGB", "CMYK", "YCbCr", "I", "F", "I;16", "HSV", "LAB"):
        out = load_image(Image.new(mode, (5, 3)))
        assert out.mode == "RGB" and out.size == (5, 3), mode


def test_exif_orientation_applied_for_files(tmp_path):
    img = rng_image(20, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rot.jpg"
    Image.fromarray(img).save(path, exif=exif, quality=95)
    assert load_image(path).size == (20, 40)  # (w, h): upright
    assert load_image(Image.open(path)).size == (40, 20)  # a PIL input is taken as it is, as transformers


# -- errors ------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_loader_errors(tmp_path, server):
    (tmp_path / "junk.png").write_bytes(b"definitely not a png")
    good = _png_bytes(rng_image(64, 64))
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    cases = [
        (tmp_path / "missing.png", "image file not found: .*missing.png"),
        (str(tmp_path), "not a file"),
        (tmp_path / "junk.png", "cannot decode image .*junk.png"),
        (tmp_path / "cut.png", "cannot decode image .*cut.png"),
        (b"\x89PNG\r\n\x1a\n garbage", r"cannot decode image image bytes \(16 bytes\)"),
        ("data:image/png;base64,AAAA", "cannot decode image data:image/png"),
        ("data:text/plain;base64,AAAA", "unsupported data URL"),
        (f"{server}/nope.png", "could not fetch image .*/nope.png: HTTP 404"),
        (f"http://127.0.0.1:{_free_port()}/x.png", "could not fetch image http://127.0.0.1"),
        (np.zeros((5, 5, 2), np.uint8), r"unsupported image array shape \(5, 5, 2\)"),
        (np.zeros((2, 4, 4, 3), np.uint8), r"unsupported image array shape \(2, 4, 4, 3\)"),
        (np.zeros((0, 4, 3), np.uint8), r"shape \(0, 4, 3\)"),
        (np.full((4, 4, 3), 300.0), "float values span"),
        (np.full((4, 4, 3), np.nan), "NaN"),
        (np.full((4, 4), -1, np.int32), "values span"),
        (np.zeros((4, 4, 3), np.complex64), "dtype complex64"),
        (12345, "unsupported image input of type int"),
    ]
    for src, pattern in cases:
        with pytest.raises(MediaError, match=pattern):
            load_image(src)


def test_process_images_errors():
    im = Image.fromarray(rng_image(50, 50))
    with pytest.raises(MediaError, match="min_pixels <= max_pixels"):
        process_images([im], min_pixels=10_000, max_pixels=5_000)
    with pytest.raises(MediaError, match="no images"):
        process_images([])
    with pytest.raises(MediaError, match="image size 0x5"):
        smart_resize(0, 5)
    assert issubclass(MediaError, ValueError)


# -- config ------------------------------------------------------------------------------------------

def test_config_from_hub_dict_and_dir(tmp_path):
    cfg = ImageProcessorConfig.from_dict(HUB)
    assert cfg == ImageProcessorConfig()  # the defaults are the hub values
    assert cfg.extra["processor_class"] == "Qwen3VLProcessor" and cfg.factor == 32
    assert ImageProcessorConfig.from_dir(tmp_path) == ImageProcessorConfig()  # no file: hub defaults
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**HUB, "min_pixels": 1024, "future_key": 1}))
    cfg = ImageProcessorConfig.from_dir(tmp_path)
    assert cfg.min_pixels == 1024 and cfg.max_pixels == 16777216 and cfg.extra["future_key"] == 1
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "processor_config.json").write_text(json.dumps({"image_processor": {"patch_size": 14}}))
    assert ImageProcessorConfig.from_dir(nested).patch_size == 14
    legacy = ImageProcessorConfig.from_dict({"size": {"min_pixels": 3136, "max_pixels": 1003520}})
    assert (legacy.min_pixels, legacy.max_pixels) == (3136, 1003520)


@pytest.mark.parametrize("bad,key", [({"patch_size": 0}, "patch_size"), ({"image_mean": [0.5, 0.5]}, "image_mean"),
                                     ({"image_std": [0.5, 0, 0.5]}, "image_std"), ({"size": 5}, "size"),
                                     ({"size": {"shortest_edge": 10, "longest_edge": 5}}, "min pixels"),
                                     ({"resample": 9}, "resample"), ({"do_resize": "yes"}, "do_resize"),
                                     ({"rescale_factor": -1}, "rescale_factor")])
def test_config_errors_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=key):
        ImageProcessorConfig.from_dict(bad)


def test_config_bad_json_file(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        ImageProcessorConfig.from_dir(tmp_path)


def test_config_flags_are_honoured(hf):
    im = Image.fromarray(rng_image(64, 96))
    raw, grid = process_images([im], ImageProcessorConfig(do_normalize=False, do_rescale=False))
    hf_raw = type(hf)(**{**{k: v for k, v in HUB.items() if not k.endswith(("_type", "_class"))},
                         "do_normalize": False, "do_rescale": False})
    assert_same((raw, grid), hf_process(hf_raw, im), "no_rescale_no_normalize")
    assert raw.max() > 1.5  # 0..255 kept


def test_shape_layout_is_c_t_p_p():
    """Row 0 is the top-left patch; its 1536 values are (C, T, P, P), both T copies equal."""
    im = rng_image(64, 64)
    pv, grid = process_images([im], min_pixels=64 * 64, max_pixels=64 * 64)
    assert grid.tolist() == [[1, 4, 4]] and pv.shape == (16, 1536)
    row = pv[0].reshape(3, 2, 16, 16)
    np.testing.assert_array_equal(row[:, 0], row[:, 1])
    expect = ((im[:16, :16].astype(np.float64) / 255).astype(np.float32) - 0.5) / 0.5
    np.testing.assert_array_equal(row[:, 0], expect.transpose(2, 0, 1))
    np.testing.assert_array_equal(pv[1].reshape(3, 2, 16, 16)[:, 0], ((im[:16, 16:32] / 255).astype(np.float32)
                                                                      - 0.5).transpose(2, 0, 1) / 0.5)
