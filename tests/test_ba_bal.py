"""BAL reader (text and bz2, bad files) and the shared BAL problems' initial costs."""

import bz2
from pathlib import Path

import pytest
import torch

from dv4d.ba.bal import bal_cost, read_bal
from dv4d.ba.errors import BalFormatError

BAL_DIR = Path(__file__).parents[1].parent / "shared" / "data" / "bal"

SMALL = """2 3 4
0 0 1.5 -2.0
1 0 0.5 1.0
0 1 3.0 4.0
1 2 -1.0 0.25
0.1 0.2 0.3 1 2 3 500 0.01 0.001
0 0 0 0 0 -5 400 0 0
1 2 3
4 5 6
7 8 9
"""


def test_read_text_and_bz2(tmp_path: Path) -> None:
    txt = tmp_path / "problem-2-3-pre.txt"
    txt.write_text(SMALL)
    packed = tmp_path / "problem-2-3-pre.txt.bz2"
    packed.write_bytes(bz2.compress(SMALL.encode()))
    for path in (txt, packed):
        data = read_bal(path)
        assert data.name == "problem-2-3-pre"
        assert (data.num_cameras, data.num_points, data.num_observations) == (2, 3, 4)
        assert data.cameras.dtype == torch.float64 and data.cameras.shape == (2, 9)
        assert data.camera_index.tolist() == [0, 1, 0, 1]
        assert data.point_index.tolist() == [0, 0, 1, 2]
        assert torch.equal(data.observations[3], torch.tensor([-1.0, 0.25], dtype=torch.float64))
        assert torch.equal(data.points[2], torch.tensor([7.0, 8.0, 9.0], dtype=torch.float64))
        assert data.cameras[0, 6] == 500


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (SMALL.rsplit("\n", 2)[0], "expected"),
        (SMALL.replace("1.5", "abc"), "non-numeric"),
        ("", "missing header"),
        (SMALL.replace("1 2 -1.0", "1 7 -1.0"), "out of range"),
        (SMALL.replace("2 3 4", "2 3 -4"), "bad header"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(BalFormatError, match=match):
        read_bal(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BalFormatError, match="not found"):
        read_bal(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    ("name", "sizes", "cost"),
    [
        ("problem-21-11315-pre.txt", (21, 11315, 36455), 4.413239e6),
        ("problem-49-7776-pre.txt", (49, 7776, 31843), 8.509125e5),
    ],
)
def test_shared_bal_initial_cost(name: str, sizes: tuple[int, int, int], cost: float) -> None:
    path = BAL_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    data = read_bal(path)
    assert (data.num_cameras, data.num_points, data.num_observations) == sizes
    assert bal_cost(data) == pytest.approx(cost, rel=1e-6)
