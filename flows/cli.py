"""The ``dv4d`` command line."""

import sys


def main(argv: list[str] | None = None) -> int:
    from dv4d.pipeline.version import DV4D_VERSION

    print(f"dv4d {DV4D_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
