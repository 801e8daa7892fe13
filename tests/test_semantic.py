"""Object captions: each instance captioned once, from the frame where it is largest, in one batch."""

import numpy as np

from dv4d.pipeline.semantic import object_captions


class FakeSuite:
    def __init__(self) -> None:
        self.batches: list[list[tuple[np.ndarray, np.ndarray]]] = []

    def caption_objects(self, objects: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
        self.batches.append(objects)
        return [f"object of {int(mask.sum())} px" for _, mask in objects]


def test_object_captions_use_the_largest_view_in_one_batch() -> None:
    frames = np.zeros((3, 20, 30, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(3)[:, None, None] * 50  # frame number in the red channel
    ids = np.zeros((3, 20, 30), np.uint16)
    ids[0, 2:6, 2:6] = 1  # 16 px
    ids[2, 2:10, 2:12] = 1  # 80 px: the largest view of instance 1
    ids[1, 10:15, 20:30] = 4  # 50 px, only in frame 1
    suite = FakeSuite()
    captions = object_captions(suite, frames, ids, [1, 4, 7])  # type: ignore[arg-type]
    assert captions == {1: "object of 80 px", 4: "object of 50 px"}  # 7 has no pixels: no caption
    assert len(suite.batches) == 1
    (crop1, mask1), (crop4, mask4) = suite.batches[0]
    assert crop1.shape == (8, 10, 3) and mask1.all() and (crop1[..., 0] == 100).all()
    assert crop4.shape == (5, 10, 3) and mask4.all() and (crop4[..., 0] == 50).all()
    assert object_captions(suite, frames, ids, []) == {}  # type: ignore[arg-type]
