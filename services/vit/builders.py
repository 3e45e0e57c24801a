"""Models the project builds itself (no weights can be downloaded here), saved with save_pretrained.

- ``vit-base-random``: the exact google/vit-base-patch16-224 architecture, processor and 1000
  ImageNet labels, random weights (performance work, the demo).
- ``vit-tiny``: the same code path and labels in about a megabyte (fast tests).
- ``vit-digits``: a small ViT trained here on scikit-learn's bundled 8x8 digits, so accuracy can be
  asserted end to end. Images are rendered as the service will receive them (grayscale 0-255 → RGB)
  and go through the model's own image processor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

SEED = 0


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (as in google/vit-base-patch16-224)."""
    text = resources.files("services.vit").joinpath("data/imagenet1k_labels.txt").read_text(encoding="utf-8")
    labels = [line for line in text.splitlines() if line]
    assert len(labels) == 1000, len(labels)
    return labels


def _processor(size: int):  # transformers' ViTImageProcessor
    from transformers import ViTImageProcessor

    # google/vit-base-patch16-224's preprocessor_config.json: bilinear resize, rescale 1/255, mean/std 0.5.
    return ViTImageProcessor(do_resize=True, size={"height": size, "width": size}, resample=2, do_rescale=True,
                             rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _save(model: torch.nn.Module, processor, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def _random_vit(out: Path, **arch: int) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    labels = imagenet_labels()
    config = ViTConfig(id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)}, **arch)
    torch.manual_seed(SEED)
    model = ViTForImageClassification(config)
    return _save(model, _processor(config.image_size), out)


def build_vit_base_random(out: Path) -> Path:
    """google/vit-base-patch16-224's architecture (86.6M parameters), random weights."""
    return _random_vit(out, image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                       num_attention_heads=12, intermediate_size=3072)


def build_vit_tiny(out: Path) -> Path:
    """Same code path and labels, ~1 MB: 224 px, patch 16, 2 blocks of width 64."""
    return _random_vit(out, image_size=224, patch_size=16, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=128)


# -- vit-digits ---------------------------------------------------------------------------------
DIGITS_SIZE = 32


def digit_image(pixels_8x8: np.ndarray) -> Image.Image:
    """One sklearn digit (values 0..16) as the RGB image a client would send (value × 255 / 16)."""
    gray = np.clip(np.asarray(pixels_8x8, dtype=np.float64).reshape(8, 8) * 255.0 / 16.0, 0, 255).round()
    return Image.fromarray(gray.astype(np.uint8), mode="L").convert("RGB")


@dataclass(frozen=True)
class DigitsSplit:
    images: list[Image.Image]
    labels: np.ndarray


def digits_splits() -> tuple[DigitsSplit, DigitsSplit]:
    """(train, held-out): index % 5 != 0 trains, index % 5 == 0 is held out."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = [digit_image(x) for x in data.images]
    idx = np.arange(len(images))
    held = idx % 5 == 0
    pick = lambda mask: DigitsSplit([images[i] for i in idx[mask]], data.target[mask])  # noqa: E731
    return pick(~held), pick(held)


def build_vit_digits(out: Path, *, epochs: int = 40, log_fn: Callable[[str], None] = print) -> Path:
    """Train a small ViT on the digits (deterministic with SEED); save it; report held-out accuracy."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(SEED)
    train, held = digits_splits()
    labels = [str(i) for i in range(10)]
    config = ViTConfig(image_size=DIGITS_SIZE, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=128, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, id2label=dict(enumerate(labels)),
                       label2id={lab: i for i, lab in enumerate(labels)})
    processor = _processor(DIGITS_SIZE)
    to_pixels = lambda imgs: processor(images=imgs, return_tensors="pt")["pixel_values"]  # noqa: E731
    x_train, x_held = to_pixels(train.images), to_pixels(held.images)
    y_train = torch.as_tensor(train.labels)
    model = ViTForImageClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps_per_epoch = (len(x_train) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]).logits, y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            acc = digits_accuracy(model, x_held, held.labels)
            log_fn(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out accuracy {acc:.4f}, "
                   f"{time.perf_counter() - started:.0f}s")
    model.eval()
    return _save(model, processor, out)


@torch.inference_mode()
def digits_accuracy(model: torch.nn.Module, pixels: torch.Tensor, labels: np.ndarray) -> float:
    model.eval()
    pred = model(pixels).logits.argmax(dim=1).numpy()
    return float((pred == labels).mean())


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "vit-base-random": build_vit_base_random,
    "vit-tiny": build_vit_tiny,
    "vit-digits": build_vit_digits,
}
