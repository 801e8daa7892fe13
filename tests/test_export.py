"""``ArrayFile`` / ``open_array``: row access equal to numpy's, bounded memory, clear storage errors."""

import errno
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dv4d.pipeline.export import ArrayFile, load_array, open_array, save_npy, save_npz


def test_rows_read_and_write_like_an_ndarray(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shape = (7, 5, 4, 3)
    ref = np.zeros(shape, np.uint16)
    arr = open_array(tmp_path / "a.npy", shape, np.uint16)
    assert (len(arr), arr.shape, arr.ndim, arr.dtype) == (7, shape, 4, np.dtype(np.uint16))
    for key in (0, -1, slice(2, 4), slice(None, None, 3), slice(5, 2, -1)):
        value = rng.integers(0, 60000, ref[key].shape, dtype=np.uint16)
        ref[key] = value
        arr[key] = value
    ref[3, 1:3, :, 0] = 9
    arr[3, 1:3, :, 0] = 9
    ref[1:3, 0] = 7
    arr[1:3, 0] = 7
    arr.flush()
    for key in (
        0,
        -2,
        6,
        slice(None),
        slice(1, 6, 2),
        slice(6, 0, -2),
        (2, 1),
        (slice(1, 4), 0, 2),
        slice(3, 3),
    ):
        np.testing.assert_array_equal(arr[key], ref[key])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), ref)  # a plain .npy file
    back = load_array(tmp_path / "a.npy")
    np.testing.assert_array_equal(back[:], ref)
    back[4][:] = 1  # rows are copies: writable, detached from the file
    np.testing.assert_array_equal(back[4], ref[4])
    with pytest.raises(IndexError):
        back[7]
    with pytest.raises(ValueError, match="read-only"):
        back[0] = 1
    copy = pickle.loads(pickle.dumps(back))  # reopened by path, as in a spawned DataLoader worker
    back.close()
    np.testing.assert_array_equal(copy[2], ref[2])


def test_zero_rows_and_small_helpers(tmp_path: Path) -> None:
    empty = open_array(tmp_path / "e.npy", (0, 3), np.float16)
    assert empty[:].shape == (0, 3)
    assert np.load(tmp_path / "e.npy").shape == (0, 3)
    save_npy(tmp_path / "k.npy", np.array([True, False]))
    save_npz(tmp_path / "p.npz", x=np.arange(3))
    assert np.load(tmp_path / "k.npy").tolist() == [True, False]
    assert np.load(tmp_path / "p.npz")["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "k.npy", "p.npz"]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_walking_every_row_keeps_memory_flat(tmp_path: Path) -> None:
    """A memory map walked row by row keeps every touched page resident; ``ArrayFile`` does not."""
    rows, row = 64, np.ones((512, 512, 3), np.uint8)  # 48 MiB in all
    arr = open_array(tmp_path / "big.npy", (rows, *row.shape), np.uint8)
    before = rss()
    for i in range(rows):
        arr[i] = row
    back = load_array(tmp_path / "big.npy")
    total = sum(int(back[i][0, 0, 0]) for i in range(rows))
    assert total == rows
    assert rss() - before < 16 * 2**20


def test_file_size_limit_fails_at_creation_naming_the_file(tmp_path: Path) -> None:
    """``open_array`` reserves its space at once: a full disk or a size limit fails there, as an
    ``OSError`` naming the file, not later as a SIGBUS inside a memory map."""
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from dv4d.pipeline.export import open_array\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "try:\n"
        "    open_array(Path(sys.argv[1]), (4, 1024, 1024), np.uint8)\n"
        "except OSError as exc:\n"
        "    print(exc.errno, exc.filename)\n"
    )
    target = tmp_path / "frames.npy"
    out = subprocess.run(
        [sys.executable, "-c", script, str(target)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [str(errno.EFBIG), str(target)]


def test_arrayfile_rejects_fortran_order(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((3, 4))))
    with pytest.raises(Exception, match="C-ordered"):
        ArrayFile(tmp_path / "f.npy")
