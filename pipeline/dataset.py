"""``Dv4dDataset``: clips of annotated videos as tensors; a worker reads only the clip's rows of each
array (positional reads, not memory maps, so its resident memory grows with the clip, not the video)."""

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dv4d.pipeline.artifacts import SCHEMA, VideoArtifacts
from dv4d.pipeline.export import load_array

FIELDS = ("rgb", "depth", "c2w", "K", "instances", "dynamic", "captions", "timestamps")
"""Every field a sample can hold:

- ``rgb`` uint8 (T,3,H,W); ``depth`` float32 (T,1,H,W) metres (0 = invalid); ``c2w`` float64 (T,4,4);
- ``K`` float64 (T,3,3); ``instances`` int64 (T,H,W) ids (0 = none); ``dynamic`` bool (T,H,W);
- ``captions`` {"scene": str, "camera": str}; ``timestamps`` float64 (T,) seconds.
Every sample also has ``video`` (folder name) and ``start`` (first frame index of the clip).
"""
OPEN_VIDEOS = 8
"""Videos whose handles (cameras, open array files) a dataset keeps per process, least recently used
dropped first: memory and open files stay bounded however many videos the root holds."""


@dataclass(frozen=True)
class Clip:
    """One sample: ``clip_len`` consecutive frames of one video starting at ``start``."""

    video_dir: Path
    start: int


def read_rgb(path: Path, start: int, count: int) -> np.ndarray:
    """Decode frames ``start .. start+count-1`` of an ``rgb.mp4`` written by dv4d: (count,H,W,3) uint8.

    Seeks to the keyframe before ``start`` (dv4d writes one every 16 frames) and decodes forward, so the
    cost depends on the clip, not on the video's length.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 1)
        time_base = float(stream.time_base or 1)
        container.seek(int(start / rate / time_base), stream=stream, backward=True, any_frame=False)
        out: list[np.ndarray] = []
        for frame in container.decode(stream):
            index = round(float(frame.pts or 0) * time_base * rate)
            if index < start:
                continue
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == count:
                break
    if len(out) != count:
        raise ValueError(f"{path}: expected {count} frames from {start}, decoded {len(out)}")
    return np.stack(out)


class Dv4dDataset(Dataset[dict[str, Any]]):
    """Clips of every ``complete`` video under ``root`` (other videos are skipped and listed in ``skipped``).

    Args:
        root: an ``annotate`` output folder.
        clip_len: frames per clip ``T``.
        stride: frames between the starts of consecutive clips (default ``clip_len``: no overlap).
        fields: which of ``FIELDS`` to load.
    """

    def __init__(
        self, root: str | Path, clip_len: int, stride: int | None = None, fields: tuple[str, ...] = FIELDS
    ) -> None:
        if clip_len < 1:
            raise ValueError(f"clip_len must be at least 1, got {clip_len}")
        stride = clip_len if stride is None else stride
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}")
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; choose from {FIELDS}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root {self.root} is not a folder")
        self.clip_len = clip_len
        self.fields = tuple(fields)
        self.clips: list[Clip] = []
        self.skipped: list[Path] = []
        for manifest_path in sorted(self.root.glob(f"*/{VideoArtifacts.MANIFEST}")):
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("status") != "complete" or manifest.get("schema") != SCHEMA:
                self.skipped.append(manifest_path.parent)
                continue
            count = int(manifest["frames"]["count"])
            for start in range(0, count - clip_len + 1, stride):
                self.clips.append(Clip(manifest_path.parent, start))
        self._open: OrderedDict[Path, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.clips)

    def _video(self, video_dir: Path) -> dict[str, Any]:
        """Per-process handles of one video (opened lazily, after a DataLoader worker forked)."""
        handles = self._open.get(video_dir)
        if handles is not None:
            self._open.move_to_end(video_dir)
        else:
            a = VideoArtifacts
            with np.load(video_dir / a.CAMERAS) as cams:
                cameras = {k: cams[k] for k in ("c2w", "K", "timestamps")}
            records = json.loads((video_dir / a.INSTANCES_JSON).read_text())
            captions = json.loads((video_dir / a.CAPTIONS).read_text())
            dynamic_ids = [r["id"] for r in records if r["dynamic"]]
            handles = {
                "cameras": cameras,
                "depth": load_array(video_dir / a.DEPTH),
                "instances": load_array(video_dir / a.INSTANCES),
                "dynamic_ids": np.array(dynamic_ids, dtype=np.int64),
                "captions": {"scene": captions.get("scene") or "", "camera": captions["camera"]["text"]},
            }
            self._open[video_dir] = handles
            if len(self._open) > OPEN_VIDEOS:
                _, evicted = self._open.popitem(last=False)
                evicted["depth"].close()
                evicted["instances"].close()
        return handles

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        h = self._video(clip.video_dir)
        sl = slice(clip.start, clip.start + self.clip_len)
        sample: dict[str, Any] = {"video": clip.video_dir.name, "start": clip.start}
        if "rgb" in self.fields:
            rgb = read_rgb(clip.video_dir / VideoArtifacts.RGB, clip.start, self.clip_len)
            sample["rgb"] = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
        if "depth" in self.fields:
            sample["depth"] = torch.from_numpy(np.asarray(h["depth"][sl], dtype=np.float32)).unsqueeze(1)
        for key in ("c2w", "K", "timestamps"):
            if key in self.fields:
                sample[key] = torch.from_numpy(np.array(h["cameras"][key][sl]))
        if "instances" in self.fields or "dynamic" in self.fields:
            ids = np.asarray(h["instances"][sl], dtype=np.int64)
            if "instances" in self.fields:
                sample["instances"] = torch.from_numpy(ids)
            if "dynamic" in self.fields:
                sample["dynamic"] = torch.from_numpy(np.isin(ids, h["dynamic_ids"]))
        if "captions" in self.fields:
            sample["captions"] = dict(h["captions"])
        return sample
