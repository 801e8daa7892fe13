"""Where every file of a run lives, and how it is written (atomically).

Layout under the output root ``OUT`` (schema ``dv4d/1``, see DESIGN.md)::

    OUT/<name>/                  final outputs of one video (manifest.json written last)
    OUT/_work/<name>-<hash12>/   stage intermediates of an unfinished run, keyed by config hash
    OUT/_logs/<name>-<stamp>.log one log per video and run

A video's folder only ever changes by a whole-folder rename (complete) or by a manifest-only folder
(failed, never put in place of a complete one), so a folder whose manifest says ``complete`` always
holds complete files. Every file is written under a temporary dot-name and renamed into place after
``fsync``; a process killed at any point leaves only dot-files (swept by the next run of that video),
stage markers of finished stages, and at most one folder ``_work/.trash+<name>+*`` being deleted.
Each video is worked on by one process at a time (``VideoArtifacts.lock``).
"""

import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = "dv4d/1"
WORK_DIR = "_work"
LOGS_DIR = "_logs"
RESERVED = (WORK_DIR, LOGS_DIR)


STORAGE_HINTS = {
    errno.ENOSPC: "the disk is full; free space or choose another -o folder, then rerun to resume",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another -o folder, then rerun",
    errno.EFBIG: "the file size limit (ulimit -f) or the file system's largest file size is reached",
    errno.EROFS: "the output file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
"""What to tell the user about an ``OSError`` of the output storage, by errno."""

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def storage_message(exc: OSError) -> str:
    """One line for a failed file operation: the path, what happened (with advice for the storage
    errors of ``STORAGE_HINTS``) and ``[Errno N]``, kept so the retry policy can tell a full disk from
    a transient fault."""
    hint = STORAGE_HINTS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    where = f"{exc.filename}: " if exc.filename is not None else ""
    return f"{where}{hint} [Errno {exc.errno}]" if exc.errno is not None else " ".join(str(exc).split())


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` of the block that names no file as one naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def fsync_dir(folder: Path) -> None:
    """Make renames and creations inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name is a dot-file keeping the suffix (``.points.x1y2.tmp.ply``: writers that choose
    the format by suffix still work). The file gets the permissions of a plain ``open`` (umask) and is
    flushed to disk before the rename. ``OSError``s of the block that name no file name ``path``.
    """
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with naming(path):
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fchmod(fd, 0o666 & ~_UMASK)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_dir(path.parent)
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

    def _trash(self) -> Path:
        """A new, unique folder under ``_work`` for things to delete (swept if a kill interrupts it)."""
        (self.out_root / WORK_DIR).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".trash+{self.name}+", dir=self.out_root / WORK_DIR))

    @contextmanager
    def lock(self, waiting: Callable[[], None] | None = None, blocking: bool = True) -> Iterator[bool]:
        """Hold an exclusive lock on this video (``_work/.lock+<name>``) for the block: a second process
        asked to annotate the same video waits (``waiting`` is called first) and then finds it done.
        With ``blocking=False`` the block runs at once and gets ``False`` when another process holds
        it. The kernel releases the lock when the holder dies, even by ``kill -9``."""
        (self.out_root / WORK_DIR).mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out_root / WORK_DIR / f".lock+{self.name}", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                free = True
            except BlockingIOError:
                free = False
            if not free and not blocking:
                yield False
                return
            if not free:
                if waiting is not None:
                    waiting()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)

    def sweep(self) -> None:
        """Remove what a killed run of this video left behind: temporary dot-files in the work and
        staging folders, and half-deleted ``.trash+<name>+*`` / ``.failed+<name>+*`` folders. Call it
        while holding ``lock``."""
        for folder in (self.work_dir, self.staging_dir):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if entry.name.startswith(".") and entry.is_file():
                        entry.unlink()
        work = self.out_root / WORK_DIR
        for prefix in (".trash+", ".failed+"):
            for leftover in work.glob(f"{glob.escape(prefix + self.name)}+*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def discard_work(self) -> None:
        """Delete this config's work folder: renamed away first, so it never exists half-deleted
        (markers without their files)."""
        if self.work_dir.exists():
            trash = self._trash()
            os.replace(self.work_dir, trash / "work")
            shutil.rmtree(trash)

    def publish(self) -> None:
        """Replace the video's folder by the staged one (whose manifest is already ``complete``), then
        delete the work folder."""
        trash = self._trash()
        target = self.final_dir
        if target.exists():
            os.replace(target, trash / "old")
        os.replace(self.staging_dir, target)
        fsync_dir(self.out_root)
        os.replace(self.work_dir, trash / "work")
        shutil.rmtree(trash)

    def write_failed(self, manifest: dict[str, Any]) -> bool:
        """Put a folder holding only a ``failed`` manifest in place of the video's folder, unless that
        folder holds a ``complete`` result (a failed rerun never destroys one). True if written."""
        current = self.read_final_manifest()
        if current is not None and current.get("status") == "complete":
            return False
        (self.out_root / WORK_DIR).mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=f".failed+{self.name}+", dir=self.out_root / WORK_DIR))
        write_json(fresh / self.MANIFEST, manifest)
        os.chmod(fresh, 0o777 & ~_UMASK)
        trash = self._trash()
        if self.final_dir.exists():
            os.replace(self.final_dir, trash / "old")
        os.replace(fresh, self.final_dir)
        fsync_dir(self.out_root)
        shutil.rmtree(trash)
        return True
