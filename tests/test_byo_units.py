"""Bring-your-own-model, the pure parts: the statistics, eval sets as data (hostile ones too), the
--deployment syntax, label matching and the numpy preprocessing (checked against transformers')."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.errors import ConfigError
from services.common.stats import Z95, holm, mcnemar_exact, wilson
from services.gateway.byo.evalset import load_eval_set, parse_registration
from services.gateway.deployments import (
    Processor,
    match_labels,
    parse_deployment,
    read_label_map,
    read_labels,
)


# -- statistics --------------------------------------------------------------------------------------
def test_wilson_known_values() -> None:
    low, high = wilson(3, 3)
    assert round(low, 4) == 0.4385 and high == 1.0  # the "3/3 gives a lower bound of 0.44"
    low, high = wilson(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    low, high = wilson(81, 100)  # textbook value: 0.7222 .. 0.8749
    assert (round(low, 4), round(high, 4)) == (0.7222, 0.8749)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(4, 3)


def test_mcnemar_exact_matches_the_binomial() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    # 0 vs 6 discordant: 2 * 0.5**6 = 0.03125 (significant at 0.05); 1 vs 6: 2 * 8/128 = 0.125
    assert mcnemar_exact(0, 6) == pytest.approx(0.03125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(2, 12) == pytest.approx(2 * sum(__import__("math").comb(14, i) for i in range(3)) / 2**14)
    assert mcnemar_exact(5000, 5000) == 1.0  # the size that took 3.6 s by hand
    assert mcnemar_exact(4900, 5100) == pytest.approx(0.0466, abs=1e-4)  # z = 2: just under 0.05
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_wilson_at_another_level() -> None:
    low99, high99 = wilson(81, 100, 2.5758293035489)  # 99%: the formula by hand gives 0.6910 .. 0.8905
    assert (round(low99, 4), round(high99, 4)) == (0.6910, 0.8905)
    assert wilson(81, 100, Z95) == wilson(81, 100)


def test_holm_known_values() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # Holm 1979: ×3, ×2, ×1, monotone
    assert holm([0.2]) == [0.2] and holm([]) == []
    assert holm([0.5, 0.6, 0.001, 0.9]) == pytest.approx([1.0, 1.0, 0.004, 1.0])


# -- eval sets ----------------------------------------------------------------------------------------
def png(path: Path, value: int = 128, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, 40)).save(path)
    return path


def test_folder_set_digest_labels_and_counts(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        for k in range(3):
            png(tmp_path / "set" / label / f"{k}.png", 10 * k + (label == "dog"))
    (tmp_path / "set" / "README.txt").write_text("not an image at the top level")
    (tmp_path / "set" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (tmp_path / "set" / "dog" / "notes.txt").write_text("x")
    s = load_eval_set("pets", tmp_path / "set")
    assert s.size == 6 and s.labels == ("cat", "dog")
    assert s.skipped == {"unreadable": 1, "not-an-image": 1, "not-in-a-label-folder": 1}
    again = load_eval_set("pets", tmp_path / "set")
    assert again.digest == s.digest and len(s.digest) == 64
    png(tmp_path / "set" / "dog" / "0.png", 200)  # one changed pixel value changes the digest
    assert load_eval_set("pets", tmp_path / "set").digest != s.digest
    with pytest.raises(ConfigError, match="changed since"):
        s.read(next(i for i in s.images if i.path == "dog/0.png"))


def test_csv_manifest_paths_outside_and_missing_labels(tmp_path: Path) -> None:
    png(tmp_path / "imgs" / "a.png")
    png(tmp_path / "imgs" / "b.png", 30)
    png(tmp_path / "secret.png", 90)
    manifest = tmp_path / "imgs" / "set.csv"
    manifest.write_text("path,label\na.png,cat\nb.png,\n../secret.png,cat\n/etc/passwd,cat\nmissing.png,dog\n")
    s = load_eval_set("csv", manifest)
    assert [i.path for i in s.images] == ["a.png"]
    assert s.skipped == {"unreadable": 1, "outside-folder": 2, "no-label": 1}


def test_symlink_loops_and_links_out_are_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "set"
    png(root / "cat" / "0.png")
    png(tmp_path / "outside.png", 70)
    os.symlink(root, root / "cat" / "loop")  # a directory loop
    os.symlink(tmp_path / "outside.png", root / "cat" / "escape.png")
    os.symlink(root / "cat" / "self.png", root / "cat" / "self.png")  # a link to itself
    s = load_eval_set("links", root)
    assert [i.path for i in s.images] == ["cat/0.png"]
    assert s.skipped == {"unreadable": 1, "outside-folder": 1}


def test_hostile_sets_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_eval_set("x", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no usable images"):
        load_eval_set("x", tmp_path / "empty")
    many = tmp_path / "many" / "lab"
    many.mkdir(parents=True)
    for i in range(30):
        (many / f"{i}.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="more than 20 files"):
        load_eval_set("x", tmp_path / "many", max_images=20)
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="UTF-8 CSV"):
        load_eval_set("x", tmp_path / "bad.csv")
    for bad in ("noequals", "=path", "UPPER=x", "a" * 40 + "=x", "nul\x00=x"):
        with pytest.raises(ConfigError):
            parse_registration(bad)


# -- deployments --------------------------------------------------------------------------------------
def test_deployment_spec_targets_and_options(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\n")
    spec = parse_deployment(f"ours=ipv4:127.0.0.1:8001,127.0.0.2:8001,model=digits,version=2,labels={labels},"
                            "output=logits")
    assert (spec.id, spec.target, spec.model, spec.version, spec.output) == (
        "ours", "ipv4:127.0.0.1:8001,127.0.0.2:8001", "digits", "2", "logits")
    assert parse_deployment("v6=[::1]:8001,model=m").target == "[::1]:8001"
    assert parse_deployment("d=dns:///triton.ns.svc:8001,model=m").target == "dns:///triton.ns.svc:8001"
    for bad, why in (("x", "ID=TARGET"), ("BAD=h:1,model=m", "id must be"), ("a=h:1", "model=NAME"),
                     ("a=,model=m", "no TARGET"), ("a=h:1,model=m,colour=red", "unknown option"),
                     ("a=h:1,model=m,model=n", "given twice"), ("a=h:1,model=m,labels=/nope", "does not exist")):
        with pytest.raises(ConfigError, match=why):
            parse_deployment(bad)


def test_labels_files_and_matching(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "tench, Tinca tinca", "1": "goldfish"}}))
    labels = read_labels(str(tmp_path / "config.json"))
    assert labels == ["tench, Tinca tinca", "goldfish"]
    (tmp_path / "map.csv").write_text("fish,goldfish\n")
    match = match_labels(("Tench", "fish", "shark"), labels, read_label_map(str(tmp_path / "map.csv")))
    assert match.index == {"Tench": 0, "fish": 1} and match.unmatched == ["shark"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="1..100000 labels"):
        read_labels(str(tmp_path / "empty.txt"))


def test_processor_matches_transformers(tmp_path: Path) -> None:
    """The gateway's numpy preprocessing gives the pixels the model was trained with (transformers')."""
    from transformers import ViTImageProcessor

    hf = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4])
    hf.save_pretrained(tmp_path)
    ours = Processor.from_file(str(tmp_path / "preprocessor_config.json"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    path = png(tmp_path / "x.png")
    image.save(path)
    expected = hf(images=image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(ours(path.read_bytes()), expected, atol=1e-5)
    (tmp_path / "bad.json").write_text("{\"size\": {\"height\": 0, \"width\": 4}}")
    with pytest.raises(ConfigError):
        Processor.from_file(str(tmp_path / "bad.json"))


def test_unmatched_labels_are_counted_and_left_out_of_accuracy_and_the_paired_test(tmp_path: Path) -> None:
    """An image whose label a model cannot output is counted for that model, never scored as a miss."""
    from services.gateway.byo.evalrun import Run, paired, score

    for label in ("cat", "dog", "okapi"):
        for k in range(2):
            png(tmp_path / "set" / label / f"{k}.png", 40 * k + ("cat", "dog", "okapi").index(label))
    s = load_eval_set("zoo", tmp_path / "set")
    labels_a, labels_b = ["cat", "dog", "okapi"], ["cat", "dog"]
    match_a, match_b = match_labels(s.labels, labels_a, {}), match_labels(s.labels, labels_b, {})
    a = Run("a", "t", top={i.path: [labels_a.index(i.label)] for i in s.images})  # always right
    b = Run("b", "t", top={i.path: [0] for i in s.images})  # always says "cat"
    ra, rb = score(a, s, match_a), score(b, s, match_b)
    assert (ra.top1.hits, ra.top1.n, ra.unmatched) == (6, 6, 0)
    assert (rb.top1.hits, rb.top1.n, rb.unmatched, rb.unmatched_labels) == (2, 4, 2, ["okapi"])
    p = paired(a, b, s, match_a, match_b, labels_a, labels_b)
    assert (p.n, p.both_right, p.only_a, p.only_b) == (4, 2, 2, 0) and p.p_value == 0.5  # 2 vs 0
    assert p.disagreements and all(d[1] == "dog" for d in p.disagreements)
