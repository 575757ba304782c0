"""Build hook of berth-client: generates the gRPC stubs from the agent's proto.

The stubs (berth_client/v1/agent_pb2.py, agent_pb2.pyi, agent_pb2_grpc.py) are
made with grpcio-tools from ``berth/v1/agent.proto`` every time the package is
built; they are never committed. The proto is looked for in the repository
(``proto/berth/v1/agent.proto``, next to this directory) and, in an sdist, in
``protos/`` (copied there when the sdist is made).

The runtime requirements follow from what was generated: grpcio at least the
grpcio-tools version, protobuf at least the version of the protoc that
grpcio-tools bundles (the generated code checks both when it is imported).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO_REL = Path("berth/v1/agent.proto")
PROTO_ROOTS = [HERE.parent, HERE / "protos"]  # repository, sdist
GEN_PACKAGE = Path("berth_client/v1")


def _proto_root() -> Path:
    for root in PROTO_ROOTS:
        if (root / PROTO_REL).is_file():
            return root
    raise SystemExit(f"berth-client: {PROTO_REL} not found in any of {[str(r) for r in PROTO_ROOTS]}")


def _generate(out_dir: Path) -> dict[str, str]:
    """Runs protoc (grpcio-tools) into out_dir/berth_client/v1; returns the
    versions the generated code needs ({'grpcio': ..., 'protobuf': ...})."""
    try:
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - build-system.requires has it
        raise SystemExit("berth-client: grpcio-tools is needed to build (pip install grpcio-tools)") from e
    import importlib.resources

    root = _proto_root()
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO_REL),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"berth-client: protoc failed on {root / PROTO_REL}")
        target = out_dir / GEN_PACKAGE
        target.mkdir(parents=True, exist_ok=True)
        src = Path(tmp) / "berth" / "v1"
        versions: dict[str, str] = {}
        for name in ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py"):
            text = (src / name).read_text()
            # protoc names the module after the proto's path (berth.v1); inside
            # this package it is a sibling module.
            text = text.replace(
                "from berth.v1 import agent_pb2 as", "from . import agent_pb2 as"
            )
            m = re.search(r"^# Protobuf Python Version: (\d+\.\d+\.\d+)", text, re.M)
            if m:
                versions["protobuf"] = m.group(1)
            m = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'", text, re.M)
            if m:
                versions["grpcio"] = m.group(1)
            (target / name).write_text(text)
    return versions


def _requirements() -> list[str]:
    """grpcio and protobuf, at least the versions the stubs are generated for."""
    with tempfile.TemporaryDirectory() as tmp:
        versions = _generate(Path(tmp))
    grpcio = versions.get("grpcio", "1.57.0")
    protobuf = versions.get("protobuf")
    reqs = [f"grpcio>={grpcio}"]
    if protobuf:
        # The gencode refuses an older runtime; a newer major may drop APIs it uses.
        major = int(protobuf.split(".")[0])
        reqs.append(f"protobuf>={protobuf},<{major + 1}")
    else:
        reqs.append("protobuf>=4.21")
    return reqs


class BuildPyWithStubs(build_py):
    """build_py that adds the generated stubs to the build (or, for an
    editable install, to the source tree, where .gitignore keeps them out)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            _generate(HERE / "src")
        else:
            _generate(Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:  # type: ignore[override]
        outputs = list(super().get_outputs(include_bytecode))
        for name in ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py"):
            outputs.append(os.path.join(self.build_lib, str(GEN_PACKAGE), name))
        return outputs


class SdistWithProto(sdist):
    """sdist that carries the proto (it lives outside this directory)."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        dest = Path(base_dir) / "protos" / PROTO_REL
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_proto_root() / PROTO_REL, dest)


setup(
    install_requires=_requirements(),
    cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto},
)
