"""The contracts: generated code is current, and the conventions hold for every package."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool
from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2
from versus.sd35.v1 import sd35_pb2
from versus.vit.v1 import vit_pb2

from services.common.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
FILES = [common_pb2, vit_pb2, sd35_pb2, ranker_pb2, gateway_pb2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / "versus").rglob("*_pb2*"))
    committed = sorted(
        p.relative_to(PROTOS) for p in (PROTOS / "versus").rglob("*_pb2*") if "__pycache__" not in p.parts
    )
    assert fresh == committed, "run `make protos` and commit the result"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, PROTOS / p, shallow=False)]
    assert not stale, f"stale generated files (run `make protos`): {stale}"


@pytest.mark.parametrize("module", FILES, ids=lambda m: m.DESCRIPTOR.package)
def test_package_is_versioned(module) -> None:
    assert module.DESCRIPTOR.package.startswith("versus.") and module.DESCRIPTOR.package.endswith(".v1")


@pytest.mark.parametrize("module", FILES, ids=lambda m: m.DESCRIPTOR.package)
def test_enums_start_with_unspecified(module) -> None:
    enums = list(module.DESCRIPTOR.enum_types_by_name.values())
    for msg in module.DESCRIPTOR.message_types_by_name.values():
        enums.extend(msg.enum_types)
    for enum in enums:
        first = enum.values_by_number[0]
        assert first.name.endswith("_UNSPECIFIED"), f"{enum.full_name}: value 0 is {first.name}"


@pytest.mark.parametrize("module", FILES[1:], ids=lambda m: m.DESCRIPTOR.package)
def test_each_rpc_has_its_own_request_and_response(module) -> None:
    for service in module.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request" or method.name == "CompareStream", method.full_name
            assert (
                method.output_type.name.startswith(method.name.removesuffix("Stream"))
                or method.name == "Generate"
                or method.name == "CompareStream"
            ), method.full_name


def test_design_rpcs_exist() -> None:
    pool = descriptor_pool.Default()
    expected = {
        "versus.vit.v1.VitService": {
            "Classify",
            "Embed",
            "ClassifyStream",
            "GetModelInfo",
            "CreateHead",
            "ListHeads",
            "DeleteHead",
        },
        "versus.sd35.v1.Sd35Service": {"Generate", "ListAdapters", "LoadAdapter", "UnloadAdapter", "GetModelInfo"},
        "versus.ranker.v1.RankerService": {"Score", "RecordMatch", "GetLeaderboard", "GetModel", "ListModels",
                                           "RegisterDeployment", "RecordAttestation", "GetAttestation",
                                           "RecordRoutePairs", "GetRouteState", "ListRoutes", "RecordFeedback"},
        "versus.gateway.v1.GatewayService": {"Compare", "CompareStream", "RenderComparison", "ListModels",
                                             "ListRoutes", "GetRoute", "RenderRoute", "Feedback"},
    }
    for name, methods in expected.items():
        service = pool.FindServiceByName(name)
        assert {m.name for m in service.methods} == methods
    vit_stream = pool.FindMethodByName("versus.vit.v1.VitService.ClassifyStream")
    assert vit_stream.client_streaming and vit_stream.server_streaming
    assert pool.FindMethodByName("versus.sd35.v1.Sd35Service.Generate").server_streaming


def test_configuration_doc_is_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_docs.py"), "--check"], capture_output=True)
    assert out.returncode == 0, "docs/CONFIGURATION.md is stale: run `python scripts/config_docs.py`"


def test_the_service_registry_names_real_pieces_that_agree() -> None:
    """Every registry entry resolves: its config's prefix is its name, its servicer implements the
    proto it names, and its server module registers that same service (so the CLI, the docs and the
    deploy tests, which read the registry, read the truth)."""
    import importlib

    from services.common import registry
    from services.common.config import ServerConfig

    assert registry.NAMES == ("vit", "sd35", "ranker", "gateway")
    for s in registry.SERVICES:
        config = s.config_class()
        assert issubclass(config, ServerConfig) and config.ENV_PREFIX.lower() == s.name
        server_module = importlib.import_module(s.server.partition(":")[0])
        assert server_module.SERVICE_NAME == s.proto and callable(s.create_server())
        servicer = registry._load(s.servicer)
        package, _, service = s.proto.rpartition(".")
        grpc_module = importlib.import_module(f"{package}.{package.split('.')[1]}_pb2_grpc")
        assert issubclass(servicer, getattr(grpc_module, f"{service}Servicer"))
        registry._load(s.backend)
    with pytest.raises(ConfigError, match="choose from vit, sd35, ranker, gateway"):
        registry.spec("nope")
