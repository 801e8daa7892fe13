"""``dv4d inspect``: a text summary of one output folder and a quick-look image."""

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dv4d.pipeline.artifacts import VideoArtifacts
from dv4d.pipeline.dataset import read_rgb
from dv4d.pipeline.errors import Dv4dError


def summarize(video_dir: Path) -> dict[str, Any]:
    """Key facts of an output folder: status, sizes, trajectory length, depth range, instances."""
    a = VideoArtifacts
    manifest_path = video_dir / a.MANIFEST
    if not manifest_path.is_file():
        raise Dv4dError(f"{video_dir} has no {a.MANIFEST}: not a dv4d output folder")
    manifest = json.loads(manifest_path.read_text())
    summary: dict[str, Any] = {
        "folder": str(video_dir),
        "status": manifest.get("status"),
        "video": manifest.get("video", {}).get("path"),
    }
    if manifest.get("status") != "complete":
        summary["error"] = manifest.get("error")
        return summary
    with np.load(video_dir / a.CAMERAS) as cams:
        c2w, K = cams["c2w"], cams["K"]
    centres = c2w[:, :3, 3]
    depth = np.load(video_dir / a.DEPTH, mmap_mode="r")
    sample = np.asarray(depth[:: max(1, len(depth) // 16)], dtype=np.float32)
    valid = sample[sample > 0]
    records = json.loads((video_dir / a.INSTANCES_JSON).read_text())
    captions = json.loads((video_dir / a.CAPTIONS).read_text())
    summary.update(
        {
            "frames": manifest["frames"],
            "metric": manifest.get("metric"),
            "focal_px": float(K[0, 0, 0]),
            "path_length": float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum()),
            "depth_valid_fraction": float(valid.size / max(sample.size, 1)),
            "depth_median": float(np.median(valid)) if valid.size else None,
            "instances": len(records),
            "dynamic_instances": sum(1 for r in records if r["dynamic"]),
            "camera_caption": captions["camera"]["text"],
            "quality": manifest.get("quality"),
            "components": {k: v.get("weights") for k, v in manifest.get("components", {}).items()},
        }
    )
    return summary


def colorize(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H,W) values -> (H,W,3) uint8 RGB with the turbo map over the valid range, black where invalid."""
    out = np.zeros((*values.shape, 3), np.uint8)
    if valid.any():
        lo, hi = np.percentile(values[valid], [2, 98])
        norm = np.clip((values - lo) / max(hi - lo, 1e-9), 0, 1)
        turbo = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
        out[valid] = turbo[valid][:, ::-1]
    return out


def quicklook(video_dir: Path, path: Path, columns: int = 4) -> Path:
    """Write a PNG: rows RGB / depth / instances for ``columns`` frames spread over the video."""
    a = VideoArtifacts
    depth = np.load(video_dir / a.DEPTH, mmap_mode="r")
    inst = np.load(video_dir / a.INSTANCES, mmap_mode="r")
    picks = np.linspace(0, len(depth) - 1, min(columns, len(depth))).round().astype(int)
    palette = np.random.default_rng(0).integers(64, 256, size=(65536, 3), dtype=np.uint8)
    palette[0] = 0
    cols = []
    for i in picks:
        rgb = read_rgb(video_dir / a.RGB, int(i), 1)[0]
        d = np.asarray(depth[i], dtype=np.float32)
        cols.append(np.concatenate([rgb, colorize(d, d > 0), palette[np.asarray(inst[i])]], axis=0))
    image = np.concatenate(cols, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image[:, :, ::-1]):
        raise Dv4dError(f"could not write {path}")
    return path
