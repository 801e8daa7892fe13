"""Where pretrained weights come from: ``--weights-dir`` copy, then the Hugging Face cache.

Runs are offline: nothing is downloaded at run time. When files are missing, one
``MissingWeightsError`` names every missing model and how to fetch it. ``download`` is for a
machine with internet (``dv4d models download``).
"""

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from dv4d.models.errors import MissingWeightsError


@dataclass(frozen=True)
class WeightsSpec:
    """One pretrained checkpoint on the Hugging Face Hub, pinned to a commit."""

    repo_id: str
    """Hub repository, ``owner/name``."""
    revision: str
    """Commit sha the code was written against (never a moving branch)."""
    files: tuple[str, ...]
    """Files needed, as glob patterns relative to the repository root; each must match a file."""
    license: str
    """License of the weights as stated on the model card."""
    size_gb: float
    """Approximate download size in GB."""

    @property
    def weights_id(self) -> str:
        """``repo_id@revision``, the id recorded in manifests."""
        return f"{self.repo_id}@{self.revision}"

    def local_dir(self, weights_dir: Path) -> Path:
        """Where a ``--weights-dir`` copy lives: ``weights_dir/<owner>/<name>/``."""
        return weights_dir / self.repo_id


@dataclass(frozen=True)
class ResolvedWeights:
    """A checkpoint found on disk."""

    spec: WeightsSpec
    """What was asked for."""
    path: Path
    """Folder holding the files (a ``--weights-dir`` copy or a Hugging Face cache snapshot)."""
    source: str
    """``"weights-dir"`` or ``"hf-cache"``."""


def _has_files(folder: Path, patterns: tuple[str, ...]) -> bool:
    if not folder.is_dir():
        return False
    present = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return all(fnmatch.filter(present, pattern) for pattern in patterns)


def _from_hf_cache(spec: WeightsSpec) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            spec.repo_id, revision=spec.revision, allow_patterns=list(spec.files), local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None
    path = Path(folder)
    return path if _has_files(path, spec.files) else None


def find_weights(spec: WeightsSpec, weights_dir: Path | None) -> ResolvedWeights | None:
    """Look for ``spec`` in ``weights_dir`` first, then in the Hugging Face cache; never downloads."""
    if weights_dir is not None and _has_files(spec.local_dir(weights_dir), spec.files):
        return ResolvedWeights(spec, spec.local_dir(weights_dir), "weights-dir")
    cached = _from_hf_cache(spec)
    return None if cached is None else ResolvedWeights(spec, cached, "hf-cache")


def resolve_all(
    wanted: dict[str, WeightsSpec], weights_dir: Path | None, preset: str
) -> dict[str, ResolvedWeights]:
    """Resolve every checkpoint of a preset (keyed by role) or raise one error listing all missing."""
    found: dict[str, ResolvedWeights] = {}
    missing: list[tuple[str, WeightsSpec]] = []
    for role, spec in wanted.items():
        resolved = find_weights(spec, weights_dir)
        if resolved is None:
            missing.append((role, spec))
        else:
            found[role] = resolved
    if missing:
        raise MissingWeightsError(missing_weights_message(missing, weights_dir, preset))
    return found


def missing_weights_message(
    missing: list[tuple[str, WeightsSpec]], weights_dir: Path | None, preset: str
) -> str:
    """The user-facing text of ``MissingWeightsError``: what is missing and the ways to fix it."""
    total = sum(spec.size_gb for _, spec in missing)
    lines = [f"preset '{preset}' needs {len(missing)} model checkpoint(s) that are not on this machine:"]
    for role, spec in missing:
        lines.append(
            f"  - {role}: {spec.repo_id} (revision {spec.revision[:12]}, ~{spec.size_gb:.2f} GB, "
            f"license {spec.license})"
        )
    where = f"--weights-dir {weights_dir}" if weights_dir is not None else "no --weights-dir given"
    lines += [
        f"Looked in: {where}; Hugging Face cache (offline).",
        "Fix one of:",
        f"  * on a machine with internet: dv4d models download --preset {preset}  (~{total:.2f} GB)",
        "    then copy the Hugging Face cache (~/.cache/huggingface/hub) here, or",
        "  * put the files in a folder and pass --weights-dir DIR, laid out as DIR/<owner>/<name>/<file>:",
    ]
    for _, spec in missing:
        lines.append(f"      DIR/{spec.repo_id}/  <- {', '.join(spec.files)}")
    lines.append("  * or run --preset classical (no learned models, geometry-only).")
    return "\n".join(lines)


def download(specs: list[WeightsSpec], weights_dir: Path | None = None) -> list[Path]:
    """Fetch ``specs`` (needs internet): into the Hugging Face cache, or ``weights_dir`` when given.

    Returns the folder of each checkpoint, in order.
    """
    from huggingface_hub import snapshot_download

    folders = []
    for spec in specs:
        local_dir = None if weights_dir is None else str(spec.local_dir(weights_dir))
        folder = snapshot_download(
            spec.repo_id, revision=spec.revision, allow_patterns=list(spec.files), local_dir=local_dir
        )
        folders.append(Path(folder))
    return folders
