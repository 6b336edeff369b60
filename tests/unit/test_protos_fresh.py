"""The committed protobuf stubs must be exactly what scripts/gen_protos.py makes from the .proto.

Images and installs use the committed stubs (no protoc at build time), so a .proto edit without
regenerating would silently ship the old contract. This test regenerates into a temporary
directory and compares every file byte for byte, in both directions.
"""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
from types import ModuleType

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_protos.py"
COMMITTED = ROOT / "shared" / "chat_shared" / "protos"


def load_generator() -> ModuleType:
    # scripts/ is not a package; load the script from its path like `python scripts/...` would.
    spec = importlib.util.spec_from_file_location("gen_protos_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stub_files(root: pathlib.Path) -> dict[str, bytes]:
    """Relative path -> bytes of every generated-kind file under ``root``."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts
    }


def differences(expected: pathlib.Path, actual: pathlib.Path) -> list[str]:
    """What differs between two stub trees: missing, extra, or changed files."""
    want, have = stub_files(expected), stub_files(actual)
    out = [f"missing: {name}" for name in sorted(want.keys() - have.keys())]
    out += [f"not generated: {name}" for name in sorted(have.keys() - want.keys())]
    out += [f"stale: {name}" for name in sorted(want.keys() & have.keys())
            if want[name] != have[name]]
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("protos")
    written = load_generator().generate(out)
    assert written, "gen_protos.generate wrote nothing"
    return out


def test_generator_writes_the_chat_v1_stubs(generated: pathlib.Path) -> None:
    assert {"chat/v1/chat_pb2.py", "chat/v1/chat_pb2.pyi", "chat/v1/chat_pb2_grpc.py"} <= set(
        stub_files(generated))


def test_committed_stubs_match_a_fresh_generation(generated: pathlib.Path) -> None:
    assert differences(generated, COMMITTED) == [], (
        "protobuf stubs are stale: run `uv run python scripts/gen_protos.py` and commit the result"
    )


def test_comparison_reports_an_edited_stub(generated: pathlib.Path, tmp_path: pathlib.Path) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(COMMITTED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "chat" / "v1" / "chat_pb2.py"
    target.write_bytes(target.read_bytes() + b"\n# hand edit\n")
    assert differences(generated, copy) == ["stale: chat/v1/chat_pb2.py"]


def test_comparison_reports_a_missing_stub(generated: pathlib.Path, tmp_path: pathlib.Path) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(COMMITTED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "chat" / "v1" / "chat_pb2_grpc.py").unlink()
    assert differences(generated, copy) == ["missing: chat/v1/chat_pb2_grpc.py"]


def test_comparison_reports_a_stub_with_no_proto(generated: pathlib.Path,
                                                 tmp_path: pathlib.Path) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(COMMITTED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "chat" / "v1" / "old_pb2.py").write_text("# left over from a deleted .proto\n")
    assert differences(generated, copy) == ["not generated: chat/v1/old_pb2.py"]
