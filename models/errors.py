"""Errors raised by the model layer (``dv4d.models`` does not import ``dv4d.pipeline``)."""


class ModelsError(Exception):
    """Base class of every error raised by ``dv4d.models``; the message is meant for the user."""


class MissingWeightsError(ModelsError):
    """Pretrained weights needed by a preset are not available locally (runs are offline)."""


class UnknownModelError(ModelsError):
    """A preset, role or model name that the registry does not know."""


class VlmOutputError(ModelsError):
    """The vision-language model kept returning output that fails validation after every retry."""
