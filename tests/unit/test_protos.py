"""The committed gRPC code of the enrollment service is what its .proto generates."""

from __future__ import annotations

import re
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
PROTO = Path("protos/fedlora/enroll/v1/enroll.proto")
GENERATED = ("enroll_pb2.py", "enroll_pb2.pyi", "enroll_pb2_grpc.py")
# Generator version stamps differ between grpcio-tools patch releases; the code must not.
_VERSIONS = re.compile(r"(Protobuf Python Version: |GRPC_GENERATED_VERSION = )\S+|^\s+\d+,$", re.M)


def _normalised(text: str) -> str:
    return _VERSIONS.sub("<version>", text)


def test_regenerating_the_enrollment_protos_changes_nothing(tmp_path: Path) -> None:
    args = ["protoc", "-I", str(REPO), f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}", str(REPO / PROTO)]  # fmt: skip
    assert protoc.main(args) == 0
    for name in GENERATED:
        fresh = (tmp_path / PROTO.parent / name).read_text()
        committed = (REPO / PROTO.parent / name).read_text()
        assert _normalised(fresh) == _normalised(committed), f"{name} is stale: run `make protos`"
