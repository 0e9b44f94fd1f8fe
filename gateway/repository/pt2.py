"""Which of PyTorch's two ``.pt2`` formats a file is.

``torch.export.save`` and ``torch._inductor.aoti_compile_and_package`` both write a zip
named ``model.pt2``; only an AOTInductor package holds compiled code, under
``<archive>/data/aotinductor/<model>/``. The Triton-style reader uses this to pick the
platform when a config names none; the AOTInductor runtime uses it to refuse the wrong one.
"""

import zipfile
from pathlib import Path

#: The folder (below the archive's top-level one) that marks an AOTInductor package.
AOTI_FOLDER = "data/aotinductor/"


def aoti_members(archive: zipfile.ZipFile) -> list[str]:
    """The archive's AOTInductor files (empty for a torch.export program)."""
    return [name for name in archive.namelist() if name.partition("/")[2].startswith(AOTI_FOLDER)]


def is_aoti_package(path: Path) -> bool:
    """True for a readable zip that holds an AOTInductor package; a bad file is left to the runtime to report."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(aoti_members(archive))
    except (OSError, zipfile.BadZipFile):
        return False
