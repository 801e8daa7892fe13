"""Errors that name a user-facing problem. Anything else reaching the top level is a bug."""


class Dv4dError(Exception):
    """A problem with one video or one run, reported as a single line (never a traceback)."""


class IngestError(Dv4dError):
    """The input is not a usable video: missing, unreadable, empty, not a video, truncated, absurd size."""


class GeometryError(Dv4dError):
    """Camera recovery could not produce poses (for example no usable correspondences at all)."""


class ModelError(Dv4dError):
    """A model could not be loaded (missing weights, unknown name) or produced invalid output."""
