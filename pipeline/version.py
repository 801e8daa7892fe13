"""The installed dv4d version."""

from importlib.metadata import version

DV4D_VERSION = version("dv4d")
