"""Bring-your-own-model helpers for the demo and the tests: the digits held-out set as an eval-set folder,
and a Triton model repository holding the project's digits networks (ONNX inside the bundled
tritonserver's Python backend)."""

from __future__ import annotations

from pathlib import Path


def write_digits_eval_set(out: Path) -> Path:
    """The held-out digits (index % 5 == 0, never trained on) as ``out/<digit>/<index>.png``."""
    from services.vit.builders import digits_splits

    held = digits_splits()[1]
    for k, (image, label) in enumerate(zip(held.images, held.labels, strict=True)):
        path = out / str(int(label)) / f"{k:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return out


def write_digits_repository(models: dict[str, Path], repo: Path, work: Path, *, input_name: str = "") -> Path:
    """Export each ``name → vit model directory`` to ONNX and write them as models of one Triton repository
    (python platform, CPU: what the bundled tritonserver runs); ``input_name`` renames the models' input."""
    from services.vit.onnx_export import export_onnx
    from services.vit.triton_repo import INPUT, RepoOptions, write_repository

    for name, model_dir in models.items():
        export = work / f"{name}-onnx"
        if not (export / "model.onnx").exists():
            export_onnx(model_dir, export)
        write_repository(export, repo, RepoOptions(name=name, platform="python", device="cpu", max_batch_size=8,
                                                   max_queue_delay_us=500, threads=1,
                                                   input_name=input_name or INPUT))
    return repo


# -- the deployments of make demo-byo and make demo-shadow -------------------------------------------
#: The project's digits network served by Versus (its OIP models "vit" and "vit-tensor") and by the bundled
#: tritonserver (ONNX in the Python backend, model "digits"), and the same network trained for 2 epochs
#: ("digits-weak", tritonserver).
WEAK_EPOCHS = 2
TRITON_MODELS = ("digits", "digits-weak")


def _digits_models(models_dir: Path, say) -> tuple[Path, Path]:
    from services.vit.builders import build_vit_digits
    from versus_cli.models import build_model

    good, weak = models_dir / "vit-digits", models_dir / "vit-digits-weak"
    if not (good / "model.safetensors").exists():
        say(f"building vit-digits into {good} (trains ~1 min) ...")
        build_model("vit-digits", good)
    if not (weak / "model.safetensors").exists():
        say(f"building vit-digits-weak into {weak} ({WEAK_EPOCHS} epochs) ...")
        build_vit_digits(weak, epochs=WEAK_EPOCHS, log_fn=say)
    return good, weak


def say(text: str) -> None:
    """The demos' progress lines, on stderr."""
    import sys

    print(text, file=sys.stderr, flush=True)


class DigitsStack:
    """The digits deployments as processes: tritonserver (``TRITON_MODELS``), a Versus ViT on vit-digits and a
    ranker on a fresh SQLite file under ``out_dir``; gateways started on them one at a time. A context manager:
    leaving it drains every process (exit codes in :attr:`codes`) and stops tritonserver.

    ``input_name`` renames the tritonserver models' input, so that they take the requests another server
    takes (Versus' ``vit-tensor`` takes ``PIXELS``): the repository then goes to its own folder."""

    def __init__(self, models_dir: Path, out_dir: Path, *, input_name: str = "") -> None:
        from versus_cli.export import LocalTriton
        from versus_cli.launch import ServiceProcess

        self.good, self.weak = _digits_models(models_dir, say)
        self.out_dir, self.logs = out_dir, out_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # A fresh record each run: the deployments' identities hold this run's ports.
        for name in ("ranker.db", "ranker.db-wal", "ranker.db-shm"):
            (out_dir / name).unlink(missing_ok=True)
        work = models_dir / "demo-byo-triton"
        self.repo = write_digits_repository({"digits": self.good, "digits-weak": self.weak},
                                            work / (f"repo-{input_name}" if input_name else "repo"), work,
                                            input_name=input_name)
        common = ["--drain-delay-s", "0"]
        self.services = {
            "vit": ServiceProcess("vit", ["--model", str(self.good), "--torch-threads", "1", *common],
                                  log_path=self.logs / "vit.log"),
            "ranker": ServiceProcess("ranker", ["--db", f"sqlite:///{out_dir / 'ranker.db'}", *common],
                                     log_path=self.logs / "ranker.log")}
        self.triton = LocalTriton(self.repo, log_path=self.logs / "tritonserver.log")
        self.codes: dict[str, int] = {}

    def __enter__(self) -> DigitsStack:
        try:
            for svc in self.services.values():  # they load while tritonserver starts
                svc.launch()
            self.triton.start(120, TRITON_MODELS)
            say(f"tritonserver ready on {self.triton.url} ({', '.join(TRITON_MODELS)})")
            for name, svc in self.services.items():
                svc.wait_ready(timeout_s=300)
                say(f"{name} SERVING on {svc.target}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def triton_deployment(self, dep_id: str, model: str) -> str:
        """A ``--deployment`` for one of tritonserver's models (labels and processor from the repository)."""
        files = self.repo / model
        return (f"{dep_id}={self.triton.url},model={model},labels={files / 'config.json'},"
                f"processor={files / 'preprocessor_config.json'}")

    def start_gateway(self, args: list[str], log: str):
        """A gateway on this ranker with ``args`` (the one started before is drained first); its ServiceProcess."""
        from versus_cli.launch import ServiceProcess

        self._stop("gateway")
        gateway = ServiceProcess("gateway", ["--ranker", self.services["ranker"].target, "--http-port", "-1",
                                             "--drain-delay-s", "0", *args], log_path=self.logs / log)
        self.services["gateway"] = gateway
        return gateway.start(timeout_s=120)

    def _stop(self, name: str) -> None:
        svc = self.services.get(name)
        if svc is not None and svc.started:
            self.codes[name] = max(self.codes.get(name, 0), svc.stop())

    def __exit__(self, *exc: object) -> None:
        try:
            for name in reversed(list(self.services)):
                self._stop(name)
        finally:
            self.triton.stop()


def run_demo_byo(models_dir: Path, out_dir: Path) -> int:
    """Compare three deployments on the held-out digits through the gateway; write the report."""
    import time

    from versus.gateway.v1 import gateway_pb2

    from services.common.client import ClientSettings
    from versus_cli.compare import run_compare, write_reports

    started = time.perf_counter()
    comparison = None
    with DigitsStack(models_dir, out_dir) as stack:
        evalset = write_digits_eval_set(out_dir / "eval-set" / "digits")
        deps = [f"versus-digits={stack.services['vit'].target},model=vit",
                stack.triton_deployment("triton-digits", "digits"),
                stack.triton_deployment("triton-digits-weak", "digits-weak")]

        def gateway(eval_set: Path, log: str) -> ClientSettings:
            svc = stack.start_gateway([*(x for d in deps for x in ("--deployment", d)),
                                       "--eval-set", f"digits={eval_set}"], log)
            say(f"gateway SERVING on {svc.target} (eval set digits = {eval_set})")
            return ClientSettings(svc.target)

        def compare(settings: ClientSettings, ids: list[str]) -> gateway_pb2.Comparison:
            return run_compare(settings, gateway_pb2.CompareRequest(
                model_ids=ids, eval_set="digits", probes=gateway_pb2.ProbeOptions(record_matches=True)),
                timeout=900)

        settings = gateway(evalset, "gateway.log")
        three = ["versus-digits", "triton-digits", "triton-digits-weak"]
        say("\n== versus-digits vs triton-digits vs triton-digits-weak on the held-out digits (3 pairs: Holm) ==")
        comparison = compare(settings, three)
        files = write_reports(settings, comparison, out_dir, timeout=120)
        print_eval_summary(comparison, files)
        say("\n== the same comparison again: the outcomes are recorded already, nothing is added ==")
        _say_recorded(say, compare(settings, three))
        say("\n== the first pair in reverse order: the keys hold the sorted pair, nothing is added ==")
        _say_recorded(say, compare(settings, ["triton-digits", "versus-digits"]))
        edited = edit_eval_set(evalset, out_dir / "eval-set-edited" / "digits")
        say(f"\n== the set edited ({EDIT_DROPPED} images removed, 1 copied): a new digest, a new record ==")
        settings = gateway(edited, "gateway-edited.log")
        _say_recorded(say, compare(settings, ["versus-digits", "triton-digits"]))
    codes = stack.codes
    say(f"\nservices drained and exited with codes {codes}; demo took {time.perf_counter() - started:.0f}s")
    return 0 if comparison is not None and not any(codes.values()) else 1


#: The demo's edit of the eval set: images of label 0 removed, and one image copied (counted once).
EDIT_DROPPED = 4


def edit_eval_set(src: Path, out: Path) -> Path:
    """A copy of an eval-set folder with ``EDIT_DROPPED`` images of label "0" removed and one image of label
    "1" copied under another name: a new digest; the copy is dropped as a duplicate."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    for path in sorted((out / "0").iterdir())[:EDIT_DROPPED]:
        path.unlink()
    first = sorted((out / "1").iterdir())[0]
    shutil.copyfile(first, out / "1" / "copy-of-first.png")
    return out


def _say_recorded(say, c) -> None:
    e = c.eval
    dropped = e.eval_set.skipped.get("duplicate", 0)
    say(f"task {e.task}: {e.eval_set.images} images, sha256 {e.eval_set.digest[:12]}"
        + (f", {dropped} duplicate dropped" if dropped else ""))
    for p in e.pairs:
        say(f"{p.deployment_a} vs {p.deployment_b}: recorded {p.recorded}, already recorded {p.duplicates}, "
            f"answered differently {p.nondeterministic}")


def print_eval_summary(c, files: list[Path], out=None) -> None:
    """The accuracy table and the paired verdicts of an eval comparison, as a terminal table."""
    from rich.table import Table

    from versus_cli.terminal import console

    out = out or console()
    e = c.eval
    dropped = e.eval_set.skipped.get("duplicate", 0)
    table = Table(title=f"{e.eval_set.name}: {e.eval_set.images} images, sha256 {e.eval_set.digest[:12]}"
                        + (f" ({dropped} duplicate images dropped)" if dropped else "")
                        + f"; sample seed {e.sample_seed} (--sample-seed {e.sample_seed} repeats the order)")
    for column in ("deployment", "state", "top-1 (95% CI)", "top-5", "p50 ms", "img/s"):
        table.add_column(column)
    for d in e.deployments:
        top1 = f"{d.top1:.1%} [{d.top1_ci_low:.1%}, {d.top1_ci_high:.1%}]" if d.scored else "—"
        name = d.deployment.id + (f" → {d.deployment.ranker_id}" if d.deployment.ranker_id not in ("", d.deployment.id)
                                  else "")
        table.add_row(name, d.state + (f": {d.reason}" if d.reason else ""), top1,
                      f"{d.top5:.1%}" if d.scored else "—", f"{d.latency_p50_ms:.2f}", f"{d.throughput_img_s:.0f}")
    out.print(table)
    for d in e.deployments:
        if d.deployment.identity_change:
            out.print(f"{d.deployment.id}: identity changed: {d.deployment.identity_change}")
    if e.correction == "holm":
        out.print(f"{len(e.pairs)} pairs tested: significance on Holm-adjusted p-values")
    for p in e.pairs:
        out.print(f"{p.deployment_a} vs {p.deployment_b}: {p.verdict}; recorded {p.recorded}, "
                  f"already recorded {p.duplicates}, answered differently {p.nondeterministic}")
    for f in files:
        out.print(f"wrote {f}")
