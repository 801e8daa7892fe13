"""The resolved configuration of one ``annotate`` run, and its hash."""

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dv4d.pipeline.captions import CaptionConfig
from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.geometry import GeometryConfig
from dv4d.pipeline.instances import TrackerConfig
from dv4d.pipeline.keyframes import KeyframeConfig
from dv4d.pipeline.motion import MotionConfig
from dv4d.pipeline.tracking import TrackingConfig

PRESETS = ("classical", "smoke", "default", "fast")
"""Model presets, see DESIGN.md: ``classical`` (no learned weights), ``smoke`` (tiny random models of the
real architectures, for tests), ``default`` (real pretrained models), ``fast`` (``default`` with Depth
Anything V2 metric small instead of Depth Pro)."""


@dataclass(frozen=True)
class AnnotateConfig:
    """Everything that decides what ``dv4d annotate`` writes for a video."""

    preset: str = "classical"
    """Model preset: one of ``PRESETS``."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda`` / ``cuda:N``."""
    fps: float | None = None
    """Cap on the sampled frame rate (frames are dropped, never duplicated); ``None`` keeps every frame."""
    max_frames: int | None = None
    """Cap on the number of sampled frames; ``None`` keeps them all."""
    resolution: int = 512
    """Long side of the working resolution in pixels (never upscaled; sides rounded down to even)."""
    intrinsics: tuple[float, float, float, float] | None = None
    """Known ``fx, fy, cx, cy`` in source-video pixels; converted to the working resolution."""
    refine_intrinsics: bool = False
    """Let the solver refine user-given intrinsics instead of holding them fixed."""
    depth_dir: Path | None = None
    """Folder of ``<video-stem>.npy`` z-depth priors in metres, (N,h,w) for the N source frames."""
    masks_dir: Path | None = None
    """Folder of ``<video-stem>.npy`` instance-id priors, (N,h,w) integers, 0 = background."""
    weights_dir: Path | None = None
    """Folder with local copies of model weights (searched before the Hugging Face cache)."""
    random_init_missing: bool = False
    """A checkpoint missing on this machine becomes its architecture at full size with random weights
    (components labelled ``random-init-full-size``, never metric) instead of stopping; for benchmarks
    (``dv4d bench pipeline``), not for annotations anyone should use."""
    chunk_frames: int = 32
    """Frames decoded and processed per chunk; bounds memory on long videos."""
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    """Keyframe selection."""
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    """Camera and static-structure recovery."""
    motion: MotionConfig = field(default_factory=MotionConfig)
    """Geometric motion segmentation (flow residual against the recovered ego-motion)."""
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    """Tracking of motion-mask instances across frames (classical and mask priors)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Detector + SAM object tracking of the model presets."""
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    """Thresholds of the camera-motion caption."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise Dv4dError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.fps is not None and not self.fps > 0:
            raise Dv4dError(f"--fps must be positive, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise Dv4dError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.resolution < 16:
            raise Dv4dError(f"--resolution must be at least 16 pixels, got {self.resolution}")
        if self.intrinsics is not None:
            fx, fy, cx, cy = self.intrinsics
            if not (fx > 0 and fy > 0 and cx >= 0 and cy >= 0):
                raise Dv4dError(f"--intrinsics needs fx, fy > 0 and cx, cy >= 0, got {self.intrinsics}")
        if self.chunk_frames < 1:
            raise Dv4dError(f"chunk_frames must be at least 1, got {self.chunk_frames}")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (paths as strings, stage configs nested), as stored in the manifest's ``config``."""
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AnnotateConfig":
        """Inverse of ``to_json`` (flow parameters travel as JSON)."""
        return cls(**_fields_from_json(cls, data))

    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of everything that changes the outputs.

        ``device`` and ``chunk_frames`` change where and how the work runs, not what it means, so they
        are left out: a video finished on a GPU node is not redone on a laptop.
        """
        payload = {k: v for k, v in self.to_json().items() if k not in ("device", "chunk_frames")}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def parse_intrinsics(text: str) -> tuple[float, float, float, float]:
    """Parse ``fx,fy,cx,cy`` (four comma-separated numbers)."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise Dv4dError(f"--intrinsics expects fx,fy,cx,cy as numbers, got {text!r}") from None
    if len(values) != 4:
        raise Dv4dError(f"--intrinsics expects 4 numbers fx,fy,cx,cy, got {len(values)}")
    return values[0], values[1], values[2], values[3]


def _to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj.resolve())
    if isinstance(obj, tuple | list):
        return [_to_json(v) for v in obj]
    return obj


def _fields_from_json(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = hint(**_fields_from_json(hint, value))
        elif value is not None and Path in typing.get_args(hint):
            value = Path(value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return kwargs
