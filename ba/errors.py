"""Errors raised by the bundle-adjustment package for invalid input."""


class BundleAdjustmentError(ValueError):
    """A problem given to the solver is malformed (shapes, indices, values)."""


class BalFormatError(BundleAdjustmentError):
    """A BAL file cannot be read: missing, truncated or not in the BAL text format."""
