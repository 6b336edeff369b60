"""Regenerates the committed protobuf/gRPC stubs from shared/proto.

Usage: uv run python scripts/gen_protos.py [OUT_DIR]

The stubs are committed so that images and installs need no protoc; tests/unit/test_protos_fresh.py
regenerates them into a temporary directory and fails when the committed ones differ.
"""

from __future__ import annotations

import pathlib
import re
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "shared" / "proto"
DEFAULT_OUT = ROOT / "shared" / "chat_shared" / "protos"
PACKAGE = "chat_shared.protos"


def _googleapis_include() -> pathlib.Path:
    import google.api.annotations_pb2 as annotations

    return pathlib.Path(annotations.__file__).resolve().parent.parent.parent


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Runs protoc for every .proto under shared/proto and returns the files written."""
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{_googleapis_include()}",
            f"-I{pathlib.Path(grpc_tools.__file__).parent / '_proto'}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for src in sorted(pathlib.Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            text = src.read_text()
            # protoc writes absolute imports rooted at the proto path ("from chat.v1 import ...");
            # our stubs live inside the chat_shared package, so root them there. buf/validate is
            # vendored beside chat/ (shared/proto/buf/validate/validate.proto, protovalidate's
            # v1.2.2): protovalidate itself ships no google.protobuf stubs of it.
            text = re.sub(r"^from (chat|buf)\.", f"from {PACKAGE}.\\1.", text, flags=re.M)
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            written.append(dest)
        for pkg_dir in {d.parent for d in written} | {out_dir}:
            d = pkg_dir
            while True:
                init = d / "__init__.py"
                if not init.exists():
                    init.write_text("")
                    written.append(init)
                if d == out_dir:
                    break
                d = d.parent
    return written


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(target):
        print(path)
