"""Score one dv4d output folder against ground truth: camera trajectory, focal, depth, dynamic masks.

Association: output frame i is matched with a GT frame by time when the GT has timestamps (TUM; GT time
= video time + offset, the offset aligning the first timestamps unless given, nearest GT pose within
``max_time_diff``), otherwise by source-frame index (GT frame j = video frame j, from
``cameras.npz``'s ``frame_index``). Output frames without a GT frame, and matched frames without a pose
(non-finite ``c2w`` or ``posed`` false in ``cameras.npz``), are counted in the report, never dropped
silently.

Metrics (evo / depth-benchmark conventions): ATE RMSE of camera centres after Sim(3) and SE(3)
alignment (metres and % of the GT path length over the evaluated frames), RPE between consecutive
evaluated frames after Sim(3) alignment, focal error with GT K rescaled to the working resolution,
depth AbsRel and delta<1.25 with one median scale for the whole video (and unscaled when the manifest
says ``metric: true``), depth coverage, IoU of the dynamic masks over all matched frames.
"""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dv4d.pipeline.artifacts import SCHEMA, VideoArtifacts
from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.gt import GroundTruth
from dv4d.pipeline.metrics import ate_rmse, depth_errors, mask_iou, rpe, trajectory_length, umeyama


@dataclass(frozen=True)
class EvalConfig:
    """How output frames are matched with GT frames and which depths count."""

    time_offset: float | None = None
    """Seconds added to video timestamps to get GT timestamps; None aligns the first timestamps."""
    max_time_diff: float = 0.02
    """Largest |video time + offset - GT time| (seconds) for a timestamp match."""
    max_depth: float | None = None
    """GT depths beyond this (metres) are ignored (e.g. 70 outdoors); None keeps all."""
    max_depth_pixels: int = 20_000_000
    """Cap on the GT depth pixels scored over the whole video; frames are subsampled on a regular pixel
    grid beyond it (bounds memory on long videos)."""


@dataclass(frozen=True)
class EvalReport:
    """Scores of one output folder. Distances in GT units (metres), angles in degrees; None = not
    computed (the reason is in ``notes``)."""

    video: str
    """The output folder's name."""
    gt_kind: str
    """Ground-truth format."""
    metric: bool
    """The manifest's ``metric`` flag (metric depth and SE(3) ATE are only meaningful when true)."""
    frames_output: int
    """Frames in the output folder."""
    frames_matched: int
    """Output frames that have a GT frame."""
    frames_posed: int
    """Matched frames with a pose (the ones the trajectory metrics use)."""
    frames_unposed: int
    """Matched frames whose pose is missing or flagged."""
    gt_path_length: float | None = None
    """Length of the GT camera path over the evaluated frames."""
    ate_sim3: float | None = None
    """RMS camera-centre error after Sim(3) alignment."""
    ate_sim3_pct: float | None = None
    """``ate_sim3`` as % of ``gt_path_length``."""
    ate_se3: float | None = None
    """RMS camera-centre error after SE(3) alignment (no scale)."""
    ate_se3_pct: float | None = None
    """``ate_se3`` as % of ``gt_path_length``."""
    scale_ratio: float | None = None
    """Output units per GT unit from the Sim(3) alignment (1 = metric scale exact)."""
    rpe_trans: float | None = None
    """RMS relative translation error between consecutive evaluated frames (after Sim(3) scale)."""
    rpe_rot_deg: float | None = None
    """RMS relative rotation error between consecutive evaluated frames."""
    focal_error_pct: float | None = None
    """Mean over frames of the larger of the fx and fy relative errors, %."""
    depth_frames: int = 0
    """Frames whose depth was scored."""
    depth_absrel: float | None = None
    """AbsRel after one median scale for the whole video."""
    depth_delta1: float | None = None
    """Fraction of pixels with max(pred/gt, gt/pred) < 1.25 after the median scale."""
    depth_scale_ratio: float | None = None
    """median(pred) / median(gt): output depth units per GT metre."""
    depth_absrel_metric: float | None = None
    """AbsRel without scaling (only when ``metric``)."""
    depth_delta1_metric: float | None = None
    """delta < 1.25 without scaling (only when ``metric``)."""
    depth_coverage: float | None = None
    """Fraction of valid GT depth pixels where the output has a depth."""
    mask_iou: float | None = None
    """IoU of the output's dynamic instances and the GT dynamic masks over all matched frames."""
    flags: list[str] = field(default_factory=list)
    """The manifest's ``quality.flags``."""
    notes: list[str] = field(default_factory=list)
    """Why a metric is missing, and anything else a reader of the numbers must know."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite numbers become None)."""
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class OutputFolder:
    """What ``evaluate`` reads from one dv4d output folder."""

    manifest: dict[str, Any]
    c2w: np.ndarray
    """(F, 4, 4) float64."""
    K: np.ndarray
    """(F, 3, 3) float64 in working-resolution pixels."""
    frame_index: np.ndarray
    """(F,) int64 source-video frame numbers."""
    timestamps: np.ndarray
    """(F,) float64 seconds."""
    posed: np.ndarray
    """(F,) bool: the frame has a pose."""


def load_output(out_dir: Path) -> OutputFolder:
    """Read the manifest and cameras of a ``complete`` dv4d output folder (``Dv4dError`` otherwise)."""
    manifest_path = out_dir / VideoArtifacts.MANIFEST
    if not manifest_path.is_file():
        raise Dv4dError(f"{out_dir}: no {VideoArtifacts.MANIFEST}; expected a dv4d output folder OUT/<video>")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Dv4dError(f"{manifest_path}: not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise Dv4dError(f"{manifest_path}: expected schema {SCHEMA}")
    if manifest.get("status") != "complete":
        reason = (manifest.get("error") or {}).get("message", "")
        raise Dv4dError(f"{out_dir}: status is {manifest.get('status')!r}, not complete {reason}".strip())
    with np.load(out_dir / VideoArtifacts.CAMERAS) as cams:
        c2w = np.asarray(cams["c2w"], dtype=np.float64)
        posed = np.asarray(np.isfinite(c2w).all(axis=(1, 2)), dtype=bool)
        if "posed" in cams.files:
            posed &= np.asarray(cams["posed"], dtype=bool)
        return OutputFolder(
            manifest=manifest,
            c2w=c2w,
            K=np.asarray(cams["K"], dtype=np.float64),
            frame_index=np.asarray(cams["frame_index"], dtype=np.int64),
            timestamps=np.asarray(cams["timestamps"], dtype=np.float64),
            posed=posed,
        )


def associate(out: OutputFolder, gt: GroundTruth, cfg: EvalConfig) -> np.ndarray:
    """(F,) int64 GT frame of each output frame, -1 where none matches."""
    if gt.timestamps is None:
        index = out.frame_index.copy()
        index[(index < 0) | (index >= gt.num_frames)] = -1
        return index
    offset = cfg.time_offset if cfg.time_offset is not None else gt.timestamps[0] - out.timestamps[0]
    query = out.timestamps + offset
    after = np.searchsorted(gt.timestamps, query)
    left, right = np.clip(after - 1, 0, gt.num_frames - 1), np.clip(after, 0, gt.num_frames - 1)
    nearest = np.where(
        np.abs(gt.timestamps[left] - query) <= np.abs(gt.timestamps[right] - query), left, right
    )
    return np.where(np.abs(gt.timestamps[nearest] - query) <= cfg.max_time_diff, nearest, -1)


def evaluate(out_dir: Path, gt: GroundTruth, cfg: EvalConfig | None = None) -> EvalReport:
    """Scores of the dv4d output folder ``out_dir`` against ``gt`` (see the module docstring)."""
    cfg = cfg or EvalConfig()
    out = load_output(out_dir)
    match = associate(out, gt, cfg)
    matched = match >= 0
    metric = bool(out.manifest.get("metric", False))
    flags = list((out.manifest.get("quality") or {}).get("flags", []))
    notes: list[str] = []
    if not matched.any():
        hint = (
            "check --time-offset" if gt.timestamps is not None else "the GT has fewer frames than the video"
        )
        raise Dv4dError(f"no output frame of {out_dir.name} matches a GT frame of {gt.source} ({hint})")
    if not matched.all():
        notes.append(f"{int((~matched).sum())} output frames have no GT frame")
    if "unregistered_frames" in flags and out.posed.all():
        repeats = int(np.all(out.c2w[1:] == out.c2w[:-1], axis=(1, 2)).sum())
        notes.append(
            f"manifest flags unregistered_frames but cameras.npz marks no frame unposed; {repeats} "
            "frames repeat the previous frame's pose exactly (likely filled in), evaluated as given"
        )
    posed = matched & out.posed
    scores: dict[str, Any] = {}
    if gt.c2w is not None:
        scores |= _trajectory_scores(out.c2w[posed], gt.c2w[match[posed]], notes)
    else:
        notes.append("no GT poses")
    work_size = (int(out.manifest["frames"]["width"]), int(out.manifest["frames"]["height"]))
    gt_size = gt.image_size or (int(out.manifest["video"]["width"]), int(out.manifest["video"]["height"]))
    if abs(gt_size[0] * work_size[1] / (gt_size[1] * work_size[0]) - 1.0) > 0.02:
        raise Dv4dError(
            f"GT images are {gt_size[0]}x{gt_size[1]} but {out_dir.name} is {work_size[0]}x{work_size[1]}: "
            "a different aspect ratio (cropped GT?) cannot be compared pixel by pixel"
        )
    if gt.K is not None:
        scores["focal_error_pct"] = _focal_error_pct(out.K[matched], gt.K[match[matched]], gt_size, work_size)
    else:
        notes.append("no GT intrinsics")
    if gt.depth is not None:
        scores |= _depth_scores(out_dir, gt, match, work_size, metric, cfg, notes)
    else:
        notes.append("no GT depth")
    if gt.dynamic is not None:
        scores["mask_iou"] = _mask_iou(out_dir, gt.dynamic, match, work_size)
    else:
        notes.append("no GT dynamic masks")
    return EvalReport(
        video=out_dir.name,
        gt_kind=gt.kind,
        metric=metric,
        frames_output=len(match),
        frames_matched=int(matched.sum()),
        frames_posed=int(posed.sum()),
        frames_unposed=int((matched & ~out.posed).sum()),
        flags=flags,
        notes=notes,
        **scores,
    )


def _trajectory_scores(est: np.ndarray, ref: np.ndarray, notes: list[str]) -> dict[str, Any]:
    if len(est) < 3:
        notes.append(f"only {len(est)} posed frames with GT: trajectory metrics need 3")
        return {}
    length = trajectory_length(ref)
    moves = float(np.ptp(est[:, :3, 3], axis=0).max()) > 0.0
    if not moves:
        notes.append("output camera centre never moves: no trajectory scale")
    sim = umeyama(est[:, :3, 3], ref[:, :3, 3], with_scale=True)
    rot_deg, trans = rpe(est, ref)
    scores: dict[str, Any] = {
        "gt_path_length": length,
        "ate_sim3": ate_rmse(est, ref, with_scale=True),
        "ate_se3": ate_rmse(est, ref, with_scale=False),
        "scale_ratio": 1.0 / sim.scale if moves and sim.scale > 0 else None,
        "rpe_trans": trans,
        "rpe_rot_deg": rot_deg,
    }
    if length > 1e-9:
        scores["ate_sim3_pct"] = 100.0 * scores["ate_sim3"] / length
        scores["ate_se3_pct"] = 100.0 * scores["ate_se3"] / length
    else:
        notes.append("GT camera does not move: no ATE as % of path length")
    return scores


def _focal_error_pct(
    K_out: np.ndarray, K_gt: np.ndarray, gt_size: tuple[int, int], work_size: tuple[int, int]
) -> float:
    """Mean over frames of max(|fx - fx_gt|/fx_gt, |fy - fy_gt|/fy_gt) in %, GT rescaled to work size."""
    scale = np.array([work_size[0] / gt_size[0], work_size[1] / gt_size[1]])
    f_gt = np.stack([K_gt[:, 0, 0], K_gt[:, 1, 1]], axis=1) * scale
    f_out = np.stack([K_out[:, 0, 0], K_out[:, 1, 1]], axis=1)
    return float(100.0 * np.mean(np.max(np.abs(f_out - f_gt) / f_gt, axis=1)))


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to (width, height), sampling at pixel centres."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST_EXACT)


def _depth_scores(
    out_dir: Path,
    gt: GroundTruth,
    match: np.ndarray,
    size: tuple[int, int],
    metric: bool,
    cfg: EvalConfig,
    notes: list[str],
) -> dict[str, Any]:
    assert gt.depth is not None
    frames = np.nonzero(match >= 0)[0]
    pred_all = np.load(out_dir / VideoArtifacts.DEPTH, mmap_mode="r")
    stride = max(1, math.ceil(math.sqrt(len(frames) * size[0] * size[1] / cfg.max_depth_pixels)))
    if stride > 1:
        notes.append(f"depth scored on every {stride}th pixel row and column")
    preds, gts = [], []
    for i in frames:
        g = _resized(gt.depth.frame(int(match[i])), size)[::stride, ::stride]
        p = np.asarray(pred_all[i], dtype=np.float32)[::stride, ::stride]
        valid = g > 0
        if cfg.max_depth is not None:
            valid &= g <= cfg.max_depth
        gts.append(g[valid])
        preds.append(p[valid])
    g_all, p_all = np.concatenate(gts), np.concatenate(preds)
    p_all = np.where(np.isfinite(p_all), p_all, np.float32(0.0))
    if len(g_all) == 0:
        notes.append("GT depth has no valid pixel in the matched frames")
        return {}
    absrel, delta1, coverage = depth_errors(p_all, g_all, median_scale=True)
    scores: dict[str, Any] = {"depth_frames": len(frames), "depth_coverage": coverage}
    if coverage == 0.0:
        notes.append("the output has no depth where the GT has")
        return scores
    has = p_all > 0
    scores |= {
        "depth_absrel": absrel,
        "depth_delta1": delta1,
        "depth_scale_ratio": float(np.median(p_all[has]) / np.median(g_all[has])),
    }
    if metric:
        scores["depth_absrel_metric"], scores["depth_delta1_metric"], _ = depth_errors(
            p_all, g_all, median_scale=False
        )
    else:
        notes.append("metric: false, metric depth not scored")
    return scores


def _mask_iou(out_dir: Path, gt_dynamic: np.ndarray, match: np.ndarray, size: tuple[int, int]) -> float:
    records = json.loads((out_dir / VideoArtifacts.INSTANCES_JSON).read_text())
    dynamic_ids = np.array([r["id"] for r in records if r["dynamic"]], dtype=np.int64)
    ids = np.load(out_dir / VideoArtifacts.INSTANCES, mmap_mode="r")
    frames = np.nonzero(match >= 0)[0]
    pred = np.stack([np.isin(ids[i], dynamic_ids) for i in frames])
    ref = np.stack([_resized(gt_dynamic[match[i]].astype(np.uint8), size) > 0 for i in frames])
    return mask_iou(pred, ref)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
