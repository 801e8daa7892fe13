"""Run mypy over the ``dv4d`` namespace.

The top-level folders are mapped onto ``dv4d.*`` by setuptools ``package-dir``, which mypy cannot
follow through an editable install. This builds a tree of symbolic links ``.typecheck/dv4d/<pkg>``
pointing at the real folders and checks that, so every module is seen under its import name.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    tree = ROOT / ".typecheck" / "dv4d"
    tree.mkdir(parents=True, exist_ok=True)
    for name, folder in mapping.items():
        link = tree / name.split(".", 1)[1]
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT / folder, target_is_directory=True)
    cmd = [sys.executable, "-m", "mypy", "-p", "dv4d", "--config-file", str(ROOT / "pyproject.toml")]
    return subprocess.call(cmd, cwd=ROOT / ".typecheck")


if __name__ == "__main__":
    sys.exit(main())
