"""The command line as a user meets it: every command's --help renders, --version answers, errors name
the flag and the environment variable, and old spellings keep working for one release with a warning."""

from __future__ import annotations

import argparse
import logging

import pytest

from services.common.errors import ConfigError
from services.ranker.config import RankerConfig
from services.sd35.config import Sd35Config
from services.vit.config import VitConfig
from versus_cli.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser, found by walking its subparsers (no list kept by hand)."""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(build_parser())
SD35 = {"SD35_MODELS": "large=/models/large"}


def test_the_walk_finds_every_command() -> None:
    assert {("serve", "vit"), ("serve", "gateway"), ("classify",), ("triton", "export")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "versus")
def test_help_renders(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*path, "--help"])
    out = capsys.readouterr()
    assert exit_.value.code == 0, out.err
    # a '%' in help text that argparse did not get escaped prints the action's dict instead of the help
    assert "option_strings" not in out.out and "Traceback" not in out.out + out.err
    assert "usage: versus" in out.out


def test_percent_in_help_is_shown_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "ranker", "--help"])
    assert "95% rating intervals" in capsys.readouterr().out


def test_choices_are_shown_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "vit", "--help"])
    assert "{DEBUG,INFO,WARNING,ERROR}" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.split()
    assert out[0] == "versus" and out[1][0].isdigit()


@pytest.mark.parametrize("env, fragment", [
    ({"VIT_MODEL": "m", "VIT_MAX_BATCH_SIZE": "0"}, "--max-batch-size (VIT_MAX_BATCH_SIZE)"),
    ({"VIT_MODEL": "m", "VIT_MAX_BATCH_SIZE": "zero"}, "--max-batch-size (VIT_MAX_BATCH_SIZE)"),
    ({"VIT_MODEL": "m", "VIT_TLS_CERT": "c.pem"}, "--tls-key (VIT_TLS_KEY)"),
])
def test_errors_name_the_flag_and_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        VitConfig.from_env(env)
    assert fragment in str(err.value)


def test_a_bad_flag_value_names_both() -> None:
    parser = argparse.ArgumentParser()
    RankerConfig.add_arguments(parser)
    with pytest.raises(ConfigError, match=r"--bootstrap-rounds \(RANKER_BOOTSTRAP_ROUNDS\)"):
        RankerConfig.from_args(parser.parse_args(["--bootstrap-rounds", "many"]), {})


def test_old_sd35_dtype_spellings_still_work_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert Sd35Config.from_env({**SD35, "SD35_DTYPE": "bf16"}).precision == "bf16"
    assert "SD35_DTYPE is deprecated" in caplog.text and "SD35_PRECISION" in caplog.text
    # the new name wins where both are set
    assert Sd35Config.from_env({**SD35, "SD35_DTYPE": "bf16", "SD35_PRECISION": "fp16"}).precision == "fp16"
    parser = argparse.ArgumentParser()
    Sd35Config.add_arguments(parser)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        args = parser.parse_args(["--dtype", "fp16"])
    assert Sd35Config.from_args(args, SD35).precision == "fp16"
    assert "--dtype is deprecated" in caplog.text and "--precision" in caplog.text


def test_clients_take_timeout_s_and_the_old_timeout(caplog: pytest.LogCaptureFixture) -> None:
    assert build_parser().parse_args(["classify", "x.png", "--timeout-s", "7"]).timeout == 7.0
    with caplog.at_level(logging.WARNING):
        assert build_parser().parse_args(["classify", "x.png", "--timeout", "8"]).timeout == 8.0
    assert "--timeout is deprecated" in caplog.text
    assert build_parser().parse_args(["generate", "a cat"]).timeout == 600.0


def test_triton_export_speaks_the_serve_vocabulary() -> None:
    from versus_cli.export import _instance_device

    assert _instance_device("auto", "onnxruntime") == "cuda" and _instance_device("auto", "python") == "cpu"
    assert _instance_device("gpu", "onnxruntime") == "cuda"
    assert build_parser().parse_args(["triton", "serve-local", "--repo", "r", "--port", "9"]).grpc_port == 9


def test_a_missing_model_stack_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common import registry
    from versus_cli.cli import CliError, _create_server

    def missing(self: registry.ServiceSpec) -> None:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(registry.ServiceSpec, "create_server", missing)
    with pytest.raises(CliError, match=r"pip install 'versus\[vit\]'"):
        _create_server("vit")
    monkeypatch.setattr(registry.ServiceSpec, "create_server",
                        lambda self: (_ for _ in ()).throw(ModuleNotFoundError("x", name="yaml")))
    with pytest.raises(ModuleNotFoundError):  # not a model stack: a real bug, not an install step
        _create_server("ranker")
