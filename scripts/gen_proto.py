"""Regenerate the Python protobuf/gRPC modules from ``proto/*.proto`` and ``proto/tfserving/*.proto``.

Usage::

    python scripts/gen_proto.py [OUT_DIR [--proto-dir DIR]]

Without arguments both sets are regenerated: ``proto/`` (the v2 API) into
``gateway/grpc/generated/`` and ``proto/tfserving/`` (TF Serving's API) into
``gateway/tfserving/generated/``. With ``OUT_DIR``, one set is written there:
``--proto-dir``'s (default ``proto/``). The script runs the
protobuf compiler bundled with ``grpcio-tools`` (``--python_out``,
``--pyi_out`` and ``--grpc_python_out``), then rewrites the absolute imports
protoc emits between our own modules (``import model_config_pb2 as ...``)
into package-relative ones (``from . import model_config_pb2 as ...``) so the
modules work inside the package ``gateway.grpc.generated``.

The output depends only on the .proto files and the grpcio-tools version, so
running the script twice gives byte-identical files; a unit test relies on
that to catch a committed module that is older than its .proto.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
DEFAULT_OUT_DIR = REPO_ROOT / "gateway" / "grpc" / "generated"
#: Every (.proto folder, generated package) pair. TF Serving's messages live in packages named
#: ``tensorflow.*``; their modules sit in our own package so they never shadow the real tensorflow.
PROTO_SETS = ((PROTO_DIR, DEFAULT_OUT_DIR),
              (PROTO_DIR / "tfserving", REPO_ROOT / "gateway" / "tfserving" / "generated"))

# Suffixes of the files protoc writes for each .proto; together with
# __init__.py these are the files this script owns in the output directory.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

INIT_TEXT = '''"""Python modules generated from {source}*.proto by scripts/gen_proto.py.

Do not edit these files by hand: change the .proto and rerun the script.
"""
'''

# ``import foo_pb2 as alias`` on a line of its own (the form protoc uses for
# imports between generated modules, in .py and .pyi output alike).
_ABSOLUTE_IMPORT = re.compile(r"^import (?P<module>\w+_pb2(?:_grpc)?) as (?P<alias>\w+)$", re.MULTILINE)


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """The .proto files to compile, in a fixed order."""
    return sorted(proto_dir.glob("*.proto"))


def make_imports_relative(text: str, local_modules: set[str]) -> str:
    """Turn protoc's absolute imports of ``local_modules`` into relative ones."""

    def replace(match: re.Match[str]) -> str:
        module = match.group("module")
        if module not in local_modules:
            return match.group(0)
        return f"from . import {module} as {match.group('alias')}"

    return _ABSOLUTE_IMPORT.sub(replace, text)


def _run_protoc(proto_dir: Path, protos: Sequence[Path], out_dir: Path) -> None:
    # Imported here so that importing this module (e.g. from a test) stays cheap.
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_dir}",
        # google/protobuf/*.proto (Any, wrappers), as grpcio-tools bundles them.
        f"--proto_path={Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        # Names relative to --proto_path, so the paths recorded in the
        # descriptors do not depend on where the checkout lives.
        *(p.relative_to(proto_dir).as_posix() for p in protos),
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with exit status {status}")


def generate(out_dir: Path = DEFAULT_OUT_DIR, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Compile every .proto in ``proto_dir`` into ``out_dir``.

    Previously generated modules in ``out_dir`` are removed first, so a
    deleted .proto does not leave a stale module behind. Returns the paths
    written, sorted by name.
    """
    protos = proto_files(proto_dir)
    if not protos:
        raise FileNotFoundError(f"no .proto files in {proto_dir}")

    stems = [p.stem for p in protos]
    local_modules = {f"{stem}_pb2" for stem in stems} | {f"{stem}_pb2_grpc" for stem in stems}

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        _run_protoc(proto_dir, protos, tmp_dir)
        produced = {p.name: p.read_text(encoding="utf-8") for p in tmp_dir.iterdir() if p.is_file()}

    for stale in sorted(out_dir.iterdir()):
        if stale.is_file() and stale.name.endswith(GENERATED_SUFFIXES):
            stale.unlink()

    source = f"{proto_dir.relative_to(REPO_ROOT).as_posix()}/" if proto_dir.is_relative_to(REPO_ROOT) else ""
    outputs = {"__init__.py": INIT_TEXT.format(source=source)}
    for name, text in produced.items():
        outputs[name] = make_imports_relative(text, local_modules)

    written: list[Path] = []
    for name in sorted(outputs):
        target = out_dir / name
        # newline="\n" keeps the bytes identical on every platform.
        with target.open("w", encoding="utf-8", newline="\n") as fh:
            fh.write(outputs[name])
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", nargs="?", type=Path, help="output directory (default: both sets in place)")
    parser.add_argument(
        "--proto-dir", type=Path, default=PROTO_DIR, help="directory holding the .proto files"
    )
    args = parser.parse_args(argv)
    sets = PROTO_SETS if args.out_dir is None else ((args.proto_dir, args.out_dir),)
    for proto_dir, out_dir in sets:
        for path in generate(out_dir, proto_dir):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
