"""Compiles the ``.proto`` files under ``protos/`` to Python modules with grpc_tools.

``python -m musicrl.proto_codegen`` (the Makefile's ``proto`` target) regenerates the checked-in modules in place.
"""

import importlib.resources
from pathlib import Path

from grpc_tools import protoc


REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    """Generates ``*_pb2.py`` and ``*_pb2.pyi`` for every ``.proto`` under ``protos/``.

    Args:
        out_dir: Root the generated package tree is written under (``musicrl/v1/...`` inside it).

    Returns:
        The paths of the generated files, sorted.

    Raises:
        RuntimeError: No ``.proto`` file was found, or protoc failed.
    """
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise RuntimeError(f"No .proto files found under {PROTO_ROOT}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(p) for p in protos),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc exited with status {rc} while compiling {len(protos)} file(s) under {PROTO_ROOT}.")
    generated = []
    for proto in protos:
        stem = out_dir / proto.relative_to(PROTO_ROOT).with_suffix("")
        generated += [stem.with_name(stem.name + "_pb2.py"), stem.with_name(stem.name + "_pb2.pyi")]
    return sorted(generated)


def main() -> None:
    """Regenerates the checked-in modules in place, under the repository root."""
    generate(REPO_ROOT)


if __name__ == "__main__":
    main()
