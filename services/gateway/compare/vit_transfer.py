"""Transfer learning on classes that mean colour cannot separate: patch-aligned stripes with a period of 16
pixels, horizontal against vertical, in random light/dark colour pairs (the same for both classes, so the
mean colour says nothing). The service's head (CreateHead, the service's own code) and the gateway's own
linear probe on the service's Embed vectors are each tested against the gateway's nearest-mean-pixel
baseline on the same split, with McNemar's exact test."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from versus.vit.v1 import vit_pb2

from services.common.stats import mcnemar_exact
from services.gateway.compare.probes import CLEANUP_TIMEOUT_S, ProbeResult, cleanup, expect, measurement, now_iso
from services.gateway.compare.vit_observe import _chunked, png
from services.gateway.compare.vit_probes import VitProbes

#: Images per class for training and held out, the stripe period (one ViT-B/16 patch), the recorded seed of
#: the colours and the shuffle, and the p-value a head must reach against the baseline.
TRAIN_PER_CLASS, HELD_OUT_PER_CLASS, PERIOD, TRANSFER_SEED, ALPHA = 8, 16, 16, 1204, 0.05
CLASSES = ("horizontal", "vertical")


def stripes(orientation: str, light: np.ndarray, dark: np.ndarray, side: int = 224) -> np.ndarray:
    on = (np.arange(side) % PERIOD) < PERIOD // 2  # patch-aligned: every 16 px patch holds one period
    mask = np.broadcast_to(on[:, None] if orientation == "horizontal" else on[None, :], (side, side))
    return np.where(mask[..., None], light, dark).astype(np.uint8)


def dataset(seed: int = TRANSFER_SEED) -> list[tuple[str, np.ndarray]]:
    """(label, pixels), shuffled with ``seed``; training first, then held out, classes balanced in both."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "held": []}
    for part, per in (("train", TRAIN_PER_CLASS), ("held", HELD_OUT_PER_CLASS)):
        for _ in range(per):
            light, dark = rng.integers(140, 256, 3), rng.integers(0, 116, 3)
            out[part] += [(c, stripes(c, light, dark)) for c in CLASSES]  # one pair per colours: same mean
        order = rng.permutation(len(out[part]))
        out[part] = [out[part][i] for i in order]
    return out["train"] + out["held"]


def nearest_mean_pixel(train: list[tuple[str, np.ndarray]], held: list[np.ndarray]) -> list[str]:
    centroids = {c: np.mean([p.reshape(-1, 3).mean(0) for lab, p in train if lab == c], axis=0) for c in CLASSES}
    return [min(CLASSES, key=lambda c: float(np.linalg.norm(p.reshape(-1, 3).mean(0) - centroids[c])))
            for p in held]


def linear_probe(train_x: np.ndarray, train_y: list[str], held_x: np.ndarray) -> list[str]:
    """Least squares to ±1 on the vectors with a bias (the minimum-norm solution when they outnumber the
    examples): the gateway's own head, independent of the service's CreateHead."""
    target = np.array([1.0 if y == CLASSES[0] else -1.0 for y in train_y])
    ones = np.ones((len(train_x), 1))
    w, *_ = np.linalg.lstsq(np.hstack([train_x, ones]), target, rcond=None)
    scores = np.hstack([held_x, np.ones((len(held_x), 1))]) @ w
    return [CLASSES[0] if s > 0 else CLASSES[1] for s in scores]


def _against(truth: list[str], got: list[str], base: list[str]) -> tuple[int, float]:
    right = [a == b for a, b in zip(got, truth, strict=True)]
    base_right = [a == b for a, b in zip(base, truth, strict=True)]
    only_got = sum(r and not b for r, b in zip(right, base_right, strict=True))
    only_base = sum(b and not r for r, b in zip(right, base_right, strict=True))
    p = mcnemar_exact(only_got, only_base) if only_got > only_base else 1.0
    return sum(right), p


async def transfer(vp: VitProbes) -> ProbeResult:
    name, at = "vit.transfer", now_iso()
    data_set = dataset()
    n_train = len(CLASSES) * TRAIN_PER_CLASS
    train, held = data_set[:n_train], data_set[n_train:]
    truth = [lab for lab, _ in held]
    head = f"versus-probe-{int(time.time() * 1000) % 10**9}"
    try:
        created = await vp._call("CreateHead", vit_pb2.CreateHeadRequest(name=head, epochs=50, examples=[
            vit_pb2.LabelledImage(image=png(p), label=lab) for lab, p in train]))
        answers = await _chunked(vp, "Classify", [png(p) for _, p in held], top_k=1, head=head)
        expect(all(r.labels for r in answers), "Classify with the head answered no labels")
        got = [r.labels[0].label for r in answers]
    finally:  # never leave a probe head behind (its own timeout: the budget may be spent by now)
        await cleanup(vp.ds.call(vp.info.component, "DeleteHead", vit_pb2.DeleteHeadRequest(name=head),
                                 CLEANUP_TIMEOUT_S))
    vectors = np.asarray([e.embeddings[0].values for e in await _chunked(
        vp, "Embed", [png(p) for _, p in data_set], pooling=vit_pb2.POOLING_CLS, normalize=True)], dtype=np.float64)
    probe = linear_probe(vectors[:n_train], [lab for lab, _ in train], vectors[n_train:])
    base = nearest_mean_pixel(train, [p for _, p in held])
    (head_right, head_p), (probe_right, probe_p) = await asyncio.gather(
        asyncio.to_thread(_against, truth, got, base), asyncio.to_thread(_against, truth, probe, base))
    n = len(held)
    base_right = sum(a == b for a, b in zip(base, truth, strict=True))
    data = {"held_out": n, "head_right": head_right, "head_p": head_p, "probe_right": probe_right,
            "probe_p": probe_p, "baseline_right": base_right, "alpha": ALPHA, "seed": TRANSFER_SEED,
            "head_labels": sorted(created.head.labels)}
    detail = (f"CreateHead '{head}' on {n_train} shuffled stripe images (period {PERIOD} px, horizontal vs "
              f"vertical, random colours, seed {TRANSFER_SEED}); on {n} held-out ones: the service's head "
              f"{head_right}/{n}, the gateway's linear probe on Embed vectors {probe_right}/{n}, the nearest-mean-"
              f"pixel baseline {base_right}/{n}; McNemar exact against the baseline: head p={head_p:.2g}, probe "
              f"p={probe_p:.2g}; deleted the head")
    return ProbeResult(name, detail, [
        measurement("head_heldout_accuracy", head_right / n, "fraction", name,
                    f"the service's head on {n} held-out stripe images", vp.w, at),
        measurement("probe_heldout_accuracy", probe_right / n, "fraction", name,
                    f"the gateway's linear probe on the Embed vectors, {n} held-out stripe images", vp.w, at),
        measurement("baseline_heldout_accuracy", base_right / n, "fraction", name,
                    f"nearest mean pixel, same split, {n} held-out images", vp.w, at)], data, vp.w, at)
