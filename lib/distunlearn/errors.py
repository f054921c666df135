"""Named exceptions.  Every message is one line that names the offending column or value."""

from __future__ import annotations


class DistUnlearnError(ValueError):
    """Base class: an error the user can fix; the CLI prints it as one line and exits 2."""


class InputError(DistUnlearnError):
    """Bad input data: a missing table or column, duplicate ids, ragged or non-finite features."""


class ConfigError(DistUnlearnError):
    """A bad configuration value or command-line option."""


class EnvironmentSetupError(DistUnlearnError):
    """The runtime is not set up: Delta jars missing or unreachable, wrong interpreter."""


class ConflictError(DistUnlearnError):
    """A concurrent writer won: nothing of this command landed; running it again is safe."""


class CheckFailed(DistUnlearnError):
    """A check of the data failed (removed ids still readable, conservation broken): exit 3."""
