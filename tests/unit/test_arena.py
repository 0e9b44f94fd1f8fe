"""The shared tensor arena (gateway/workers/arena.py): allocation, reuse, views across processes."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from gateway.workers.arena import ALIGN, Arena


@pytest.fixture
def arena() -> Arena:
    return Arena(64 * 1024)


def test_put_copies_the_array_and_array_views_it(arena: Arena) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    ref = arena.put(data)
    assert ref is not None
    view = arena.array(ref)
    assert view.tolist() == data.tolist() and view.dtype == data.dtype
    data[0, 0] = 99  # the arena holds its own copy
    assert view[0, 0] == 0


def test_blocks_are_aligned_and_do_not_overlap(arena: Arena) -> None:
    offsets = [arena.alloc(n) for n in (1, 100, 64, 65)]
    assert all(o is not None and o % ALIGN == 0 for o in offsets)
    spans = sorted((o, o + max(ALIGN, -(-n // ALIGN) * ALIGN)) for o, n in zip(offsets, (1, 100, 64, 65), strict=True)
                   if o is not None)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))


def test_a_full_arena_refuses_instead_of_growing(arena: Arena) -> None:
    assert arena.alloc(64 * 1024) == 0
    assert arena.alloc(1) is None
    assert arena.put(np.zeros(4, np.float32)) is None


def test_freed_blocks_coalesce_so_a_large_block_fits_again(arena: Arena) -> None:
    blocks = [arena.alloc(16 * 1024) for _ in range(4)]
    assert None not in blocks and arena.alloc(1) is None
    for offset in (blocks[1], blocks[3], blocks[0], blocks[2]):
        assert offset is not None
        arena.free(offset)
    assert arena.used == 0
    assert arena.alloc(64 * 1024) == 0


def test_unknown_and_double_frees_are_ignored(arena: Arena) -> None:
    offset = arena.alloc(100)
    assert offset is not None
    arena.free(offset)
    arena.free(offset)
    arena.free(12345)
    assert arena.used == 0 and arena.alloc(64 * 1024) == 0


def test_object_arrays_are_not_placed(arena: Arena) -> None:
    assert arena.put(np.array([b"a"], dtype=object)) is None


def test_another_process_sees_the_bytes_through_the_inherited_fd(arena: Arena) -> None:
    ref = arena.put(np.arange(8, dtype=np.int64))
    assert ref is not None
    script = ("import sys; import numpy as np; from gateway.workers.arena import Arena; "
              "from gateway.contract import TensorRef; a = Arena(int(sys.argv[2]), int(sys.argv[1])); "
              "v = a.array(TensorRef(int(sys.argv[3]), 64, '<i8', (8,))); print(v.sum()); v[0] = 100")
    run = subprocess.run([sys.executable, "-c", script, str(arena.fd), str(arena.size), str(ref.offset)],
                         pass_fds=(arena.fd,), capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "28"
    assert arena.array(ref)[0] == 100  # the child wrote into the same memory


def test_close_releases_the_fd(arena: Arena) -> None:
    fd = arena.fd
    arena.close()
    with pytest.raises(OSError):
        os.fstat(fd)
