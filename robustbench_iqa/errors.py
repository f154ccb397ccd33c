"""User-facing errors.

Every problem that comes from the caller's input (a missing file, a corrupt image,
NaN values, a wrong shape, a sample count too small for a bound, ...) is raised as
:class:`InputError` with a one-line message that names the problem.  The CLI turns
it into ``error: <message>`` and exit code 2; library users can catch it like any
``ValueError``.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the caller; the message is meant to be shown as is."""


class WeightsUnavailableError(InputError):
    """Pretrained weights were requested but could not be loaded or downloaded."""


class ReproducibilityWarning(UserWarning):
    """Results will equal a reference run only to a tolerance, not bit for bit (e.g. a run resumed
    with another thread count).  The CLI prints it as one ``warning: ...`` line."""


class DataWarning(UserWarning):
    """A dataset's files disagree in a way that does not change the numbers read (e.g. a KonIQ-10k sets
    file whose MOS differs from the scores file the targets come from).  The CLI prints it as one
    ``warning: ...`` line."""


class BoundUnavailableError(InputError):
    """No certified bound (e.g. a Lipschitz constant) can be computed for this model or layer."""
