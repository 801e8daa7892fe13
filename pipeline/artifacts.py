"""Where every file of a run lives, and how it is written (atomically).

Layout under the output root ``OUT`` (schema ``dv4d/1``, see DESIGN.md)::

    OUT/<name>/                  final outputs of one video (manifest.json written last)
    OUT/_work/<name>-<hash12>/   stage intermediates of an unfinished run, keyed by config hash
    OUT/_logs/<name>-<stamp>.log one log per video and run

A video's folder only ever changes by a whole-folder rename (complete) or by a manifest-only folder
(failed), so a folder whose manifest says ``complete`` always holds complete files.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = "dv4d/1"
WORK_DIR = "_work"
LOGS_DIR = "_logs"
RESERVED = (WORK_DIR, LOGS_DIR)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (sorted keys, indented, trailing newline)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file; ``None`` when it is missing or not valid JSON (an interrupted foreign write)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def safe_stem(video: Path) -> str:
    """A folder name for a video that cannot escape the output root.

    Non-UTF-8 bytes, path separators, control characters and leading dots are replaced, so ``..``,
    ``.hidden`` or a name of undecodable bytes all map to plain names.
    """
    raw = os.fsencode(video.name)
    stem = os.fsdecode(raw.rsplit(b".", 1)[0] if b"." in raw[1:] else raw)
    text = stem.encode("utf-8", "replace").decode("utf-8", "replace")
    text = re.sub(r"[^\w.\- ]", "_", text).strip(" .")
    if not text or text in RESERVED:
        text = f"video_{text}" if text else "video"
    return text


def assign_names(videos: list[Path], out_root: Path) -> dict[Path, str]:
    """Give each video a unique folder name under ``out_root``.

    A video keeps its stem unless another input of this batch already took it, or ``OUT/<stem>`` holds
    the results of a different source file; then a short hash of its absolute path is appended.
    Names are stable across reruns of the same inputs.
    """
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for video in videos:
        name = safe_stem(video)
        manifest = read_json(out_root / name / "manifest.json")
        other_source = isinstance(manifest, dict) and manifest.get("video", {}).get("path") != str(
            video.absolute()
        )
        if name in taken or other_source:
            digest = hashlib.sha256(os.fsencode(video.absolute())).hexdigest()[:8]
            name = f"{name}-{digest}"
        taken.add(name)
        names[video] = name
    return names


@dataclass(frozen=True)
class VideoArtifacts:
    """All paths of one video's run. Nothing else in dv4d builds output paths."""

    out_root: Path
    """The ``-o`` folder."""
    name: str
    """The video's folder name (see ``assign_names``)."""
    config_hash: str
    """Hash of the resolved config; keys the work folder so a changed config never reuses stale stages."""

    @property
    def final_dir(self) -> Path:
        return self.out_root / self.name

    @property
    def work_dir(self) -> Path:
        return self.out_root / WORK_DIR / f"{self.name}-{self.config_hash[:12]}"

    @property
    def staging_dir(self) -> Path:
        """Where the final folder is assembled before it is renamed into place."""
        return self.work_dir / "final"

    @property
    def logs_dir(self) -> Path:
        return self.out_root / LOGS_DIR

    def log_file(self, stamp: str) -> Path:
        return self.logs_dir / f"{self.name}-{stamp}.log"

    # final files, relative to a video folder (final or staging)
    MANIFEST = "manifest.json"
    CAMERAS = "cameras.npz"
    DEPTH = "depth.npy"
    INSTANCES = "instances.npy"
    INSTANCES_JSON = "instances.json"
    CAPTIONS = "captions.json"
    RGB = "rgb.mp4"
    POINTS = "points.ply"

    def staged(self, name: str) -> Path:
        return self.staging_dir / name

    def final(self, name: str) -> Path:
        return self.final_dir / name

    def work(self, name: str) -> Path:
        """A stage intermediate (frames, geometry, ...) in the work folder."""
        return self.work_dir / name

    def stage_marker(self, stage: str) -> Path:
        return self.work_dir / f"{stage}.done.json"

    def read_final_manifest(self) -> dict[str, Any] | None:
        data = read_json(self.final(self.MANIFEST))
        return data if isinstance(data, dict) else None

    def publish(self) -> None:
        """Replace the video's folder by the staged one (whose manifest is already ``complete``)."""
        target = self.final_dir
        if target.exists():
            trash = self.out_root / WORK_DIR / f".trash-{self.name}-{os.getpid()}"
            os.replace(target, trash)
            shutil.rmtree(trash)
        os.replace(self.staging_dir, target)
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def write_failed(self, manifest: dict[str, Any]) -> None:
        """Replace the video's folder by one holding only a ``failed`` manifest."""
        target = self.final_dir
        fresh = self.out_root / WORK_DIR / f".failed-{self.name}-{os.getpid()}"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        write_json(fresh / self.MANIFEST, manifest)
        if target.exists():
            trash = self.out_root / WORK_DIR / f".trash-{self.name}-{os.getpid()}"
            os.replace(target, trash)
            shutil.rmtree(trash)
        os.replace(fresh, target)
