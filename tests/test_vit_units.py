"""Unit tests of the ViT service's pure parts: image validation, pooling, top-k, linear probes."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import encode, sample_image
from PIL import Image

from services.common.errors import InvalidArgument
from services.vit.errors import InvalidImage
from services.vit.heads import HeadRegistry, fit_linear_probe
from services.vit.images import decode_image
from services.vit.tasks import pool, softmax_top_k


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, with no pixel data (a decompression-bomb probe)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    data = encode(sample_image(1, (128, 128)), "JPEG", quality=90)
    return data[: len(data) // 2]


def decode(data: bytes) -> Image.Image:
    return decode_image(data, "images[0]", max_pixels=40_000_000, min_side=8)


BAD_IMAGES = {
    "empty": (b"", "empty"),
    "corrupt": (b"\x00\x01definitely not an image" * 10, "not a decodable image"),
    "truncated-jpeg": (truncated_jpeg(), "truncated or corrupt JPEG"),
    "unsupported-tiff": (encode(sample_image(), "TIFF"), "unsupported format TIFF"),
    "one-pixel": (encode(Image.new("RGB", (1, 1))), "smaller than the minimum side"),
    "zero-pixel": (png_header_only(0, 16), "images[0]"),
    "bomb": (png_header_only(60_000, 60_000), "pixels"),
    "bomb-beyond-pil-limit": (png_header_only(100_000, 100_000), "too many pixels"),
}


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_bad_images_are_invalid_argument_naming_the_field(name: str) -> None:
    data, fragment = BAD_IMAGES[name]
    with pytest.raises(InvalidImage) as info:
        decode(data)
    assert info.value.field == "images[0]"
    assert fragment in info.value.message


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("PNG", "P"), ("WEBP", "RGB"),
                                       ("BMP", "RGB"), ("GIF", "P"), ("PNG", "I;16"), ("PNG", "1")])
def test_supported_formats_and_modes_become_rgb(fmt: str, mode: str) -> None:
    image = sample_image(2, (40, 30)).convert(mode if mode != "I;16" else "I").convert(mode) if mode == "I;16" \
        else sample_image(2, (40, 30)).convert(mode)
    out = decode(encode(image, fmt))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode(buf).getpixel((0, 0))[0] > 200


def test_softmax_top_k_sorted_and_normalised() -> None:
    logits = torch.tensor([0.1, 3.0, -1.0, 2.0])
    top = softmax_top_k(logits, 4)
    assert [i for i, _ in top] == [1, 3, 0, 2]
    assert abs(sum(s for _, s in top) - 1.0) < 1e-6


def test_pooling() -> None:
    hidden = torch.tensor([[3.0, 4.0], [1.0, 0.0], [2.0, 2.0]])
    assert pool(hidden, "cls", False).tolist() == [3.0, 4.0]
    assert pool(hidden, "mean", False).tolist() == [2.0, 2.0]
    assert np.allclose(pool(hidden, "cls", True), [0.6, 0.8])


def test_linear_probe_separates_classes_deterministically() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (3, 16))
    x = np.concatenate([c + rng.normal(0, 0.1, (20, 16)) for c in centers])
    y = np.repeat(np.arange(3), 20)
    w1, b1, acc = fit_linear_probe(x, y, 3, 50)
    w2, _, _ = fit_linear_probe(x, y, 3, 50)
    assert acc == 1.0 and np.array_equal(w1, w2) and w1.shape == (3, 16) and b1.shape == (3,)


@pytest.mark.parametrize("name, labels, field, fragment", [
    ("bad name!", ["a", "b"], "name", "1..64 characters"),
    ("x" * 65, ["a", "b"], "name", "65 characters"),
    ("ok", ["a", "a"], "examples", "distinct"),
    ("ok", ["a", ""], "examples[1].label", "1..128 characters"),
    ("ok", ["a", "b\x00"], "examples[1].label", "without NUL"),
])
def test_head_validation(name: str, labels: list[str], field: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        HeadRegistry.validate_new(name, labels)
    assert info.value.field == field and fragment in info.value.message
    assert len(info.value.message) < 200


def test_an_undecodable_upload_is_named_by_its_field_not_by_pils_file_object() -> None:
    from services.vit.errors import InvalidImage
    from services.vit.images import check_header

    with pytest.raises(InvalidImage) as err:
        check_header(b"this is not an image", "images[3].data", max_pixels=10**6, min_side=8)
    text = str(err.value)
    assert "images[3].data" in text and "BytesIO" not in text and "0x" not in text


def test_built_models_are_readable_by_another_user(tmp_path) -> None:
    """safetensors writes 0600; the image's server runs as uid 10001 over a read-only mount."""
    import os
    import stat

    from versus_cli.models import build_model

    out = build_model("vit-tiny", tmp_path / "vit-tiny")
    umask = os.umask(0)
    os.umask(umask)
    for path in out.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) & 0o004 or umask & 0o004, f"{path.name} is not world-readable"
