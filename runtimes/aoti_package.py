"""What an AOTInductor ``.pt2`` package says about itself, read from the zip without loading it.

torch 2.13's loader exposes only the package's metadata (``AOTI_DEVICE_KEY``: the device it
was compiled for) and its pytree call spec; it keeps no record of input shapes or of the
ranges declared with ``torch.export.Dim``. Those survive only as the input checks AOTInductor
compiles into the model (``check_input_<i>`` in the packaged ``*.wrapper.cpp``, the code that
``AOTI_RUNTIME_CHECK_INPUTS=1`` turns on), so that is where they are read from: each input's
dtype and, per dimension, a fixed size or a ``[min, max]`` range (max None when unbounded).
Reading the metadata first also lets a CUDA package be refused on a CPU instance before its
kernels are loaded.
"""

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from gateway.repository.pt2 import aoti_members
from runtimes.base import ModelLoadError

#: c10 scalar type names (as the checks print them, ``at::k<Name>``) -> protocol datatype.
DATATYPE_OF_SCALAR: dict[str, str] = {
    "Bool": "BOOL", "Byte": "UINT8", "UInt16": "UINT16", "UInt32": "UINT32", "UInt64": "UINT64",
    "Char": "INT8", "Short": "INT16", "Int": "INT32", "Long": "INT64", "Half": "FP16", "Float": "FP32",
    "Double": "FP64", "BFloat16": "BF16",
}

_CHECK = r'input_handles\[(\d+)\]: '
_DTYPE = re.compile(_CHECK + r'unmatched dtype, "\s*<< "expected: " << \w+ << "\(at::k(\w+)\)')
_FIXED = re.compile(_CHECK + r'unmatched dim value at (\d+), "\s*<< "expected: (\d+), "')
_MIN = re.compile(_CHECK + r'dim value is too small at (\d+), "\s*<< "expected it to be >= (\d+), "')
_MAX = re.compile(_CHECK + r'dim value is too large at (\d+), "\s*<< "expected to be <= (\d+), "')
_STRIDE = re.compile(_CHECK + r'unmatched stride value at (\d+), ')


@dataclass(frozen=True)
class Dimension:
    """One input dimension as compiled: fixed when ``low == high``; ``high`` None when unbounded."""

    low: int
    high: int | None

    @property
    def fixed(self) -> bool:
        return self.low == self.high

    def __str__(self) -> str:
        return str(self.low) if self.fixed else f"{self.low}..{self.high if self.high is not None else ''}"


@dataclass(frozen=True)
class CompiledInput:
    datatype: str
    dims: tuple[Dimension, ...]


@dataclass(frozen=True)
class PackageInfo:
    """The compiled-for device type (``cpu``, ``cuda``, ...) and the inputs, in call order (None: no checks found)."""

    device: str
    inputs: tuple[CompiledInput, ...] | None


def read_package(path: Path) -> PackageInfo:
    """The package's device and inputs, or a ModelLoadError naming the file and what is wrong with it."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = aoti_members(archive)
            if not members:
                raise ModelLoadError(f"{path}: not an AOTInductor package (no data/aotinductor/ in the archive); "
                                     "a torch.export program is served with platform torch_export")
            if archive.testzip() is not None:
                raise ModelLoadError(f"{path}: not a usable AOTInductor package: the archive is damaged")
            metadata = [json.loads(archive.read(n)) for n in members if n.endswith("wrapper_metadata.json")]
            sources = [archive.read(n).decode() for n in members if n.endswith(".wrapper.cpp")]
    except (OSError, zipfile.BadZipFile, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a usable AOTInductor package: {exc}") from None
    if len(metadata) != 1 or "AOTI_DEVICE_KEY" not in metadata[0]:
        raise ModelLoadError(f"{path}: not a usable AOTInductor package: it holds {len(metadata)} compiled "
                             "model(s) with metadata, not one")
    return PackageInfo(str(metadata[0]["AOTI_DEVICE_KEY"]), _inputs(sources[0]) if len(sources) == 1 else None)


def _inputs(source: str) -> tuple[CompiledInput, ...] | None:
    dtypes = {int(i): DATATYPE_OF_SCALAR.get(name, name) for i, name in _DTYPE.findall(source)}
    if not dtypes or sorted(dtypes) != list(range(len(dtypes))):
        return None
    low: dict[tuple[int, int], int] = {}
    high: dict[tuple[int, int], int] = {}
    for pattern, into in ((_FIXED, (low, high)), (_MIN, (low,)), (_MAX, (high,))):
        for i, d, value in pattern.findall(source):
            for bounds in into:
                bounds[(int(i), int(d))] = int(value)
    rank = {i: 0 for i in dtypes}
    for i, d in [*low, *high, *((int(i), int(d)) for i, d in _STRIDE.findall(source))]:
        rank[i] = max(rank[i], d + 1)
    return tuple(CompiledInput(dtypes[i], tuple(Dimension(low.get((i, d), 0), high.get((i, d)))
                                                for d in range(rank[i]))) for i in sorted(dtypes))
