"""Known answers (issue 20 §3): the shipped reference inputs, the tolerance per backend and precision, and
``versus weights fingerprint PATH`` recording the outputs of the files an operator hashed."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common import known_answers as ka
from services.common.weights import combined_digest, weight_files


def test_the_shipped_reference_images_are_the_seeded_drawing() -> None:
    shipped = ka.reference_images()
    assert len(shipped) == ka.REFERENCE_COUNT and len(set(shipped)) == ka.REFERENCE_COUNT
    for i, data in enumerate(shipped):
        with Image.open(io.BytesIO(data)) as img:
            assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(ka.make_reference_image(i)))


def _record(rows: list[list[float]]) -> dict:
    return ka.record(rows, "ab" * 32, backend="torch", precision="fp32", device="cpu", recorded_by="test")


def test_a_record_is_reproduced_within_the_tolerance_of_the_deployments_precision() -> None:
    rows = [list(np.linspace(-3, 3 + i, 10)) for i in range(ka.REFERENCE_COUNT)]
    doc = ka.parse(json.dumps(_record(rows)))
    assert doc["outputs"][0]["top5"] == [9, 8, 7, 6, 5]
    assert ka.compare(doc, rows, "torch", "fp32")[0]
    near = [[v + 5e-4 for v in r] for r in rows]  # reduction order: fp32 torch vs ONNX Runtime
    assert ka.compare(doc, near, "onnx", "fp32")[0]
    rounded = [[v + 0.1 for v in r] for r in rows]  # bf16-sized differences
    assert not ka.compare(doc, rounded, "torch", "fp32")[0] and ka.compare(doc, rounded, "torch", "bf16")[0]
    other = [list(np.linspace(3, -3, 10)) for _ in rows]  # other weights: another scale of answer
    ok, said = ka.compare(doc, other, "triton", "int8")
    assert not ok and "top-1 changed on 4 of 4" in said
    assert not ka.compare(doc, [r[:9] for r in rows], "torch", "fp32")[0]  # another label count
    assert not ka.compare(doc, rows[:2], "torch", "fp32")[0]  # answers missing


def test_unreadable_records_are_refused() -> None:
    for bad in ("[]", '{"format": 1}', json.dumps(_record([[1.0]] * ka.REFERENCE_COUNT) | {"format": 2})):
        with pytest.raises(ValueError, match="known-answer record"):
            ka.parse(bad)


@pytest.mark.slow
def test_fingerprint_records_the_outputs_of_the_files_hashed(tmp_path: Path, vit_tiny_dir: Path, capsys) -> None:
    from versus_cli.cli import main

    model = shutil.copytree(vit_tiny_dir, tmp_path / "ckpt")
    (model / ka.KNOWN_ANSWERS_FILE).unlink(missing_ok=True)
    assert main(["weights", "fingerprint", str(model)]) == 0
    doc, why = ka.read(model)
    assert doc is not None, why
    assert doc["weights_digest"] == combined_digest(weight_files(model)) and "recorded the known answers" in \
        capsys.readouterr().out
    assert doc["reference_set"] == ka.reference_set_digest(ka.reference_images())
    assert len(doc["outputs"][0]["logits"]) == 1000 and doc["recorded_with"]["precision"] == "fp32"
    built, _ = ka.read(vit_tiny_dir)  # the builder's record of the same files: the same answers
    assert built is not None and ka.compare(built, [o["logits"] for o in doc["outputs"]], "torch", "fp32")[0]
