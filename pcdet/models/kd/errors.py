"""The one error type of the KD layer: a distillation setup that cannot run as configured."""

from __future__ import annotations

from ...utils.cli import InputError


class KDConfigError(InputError, ValueError):
    """A KD config, teacher checkpoint or feature key that does not fit the models; the message names the culprit."""
