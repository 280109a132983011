"""The one exception type for mistakes a user can make (bad input, missing files, wrong options)."""

from __future__ import annotations


class CxrError(Exception):
    """A user-facing error: the message says what is wrong, where, and what to do.

    The CLI prints it without a traceback and exits with status 2.
    """


class DataError(CxrError):
    """A dataset, manifest or image on disk is not what cxraug expects."""


class OptionsError(CxrError):
    """A plugin option, config file or command-line value is invalid."""


class PluginError(CxrError):
    """A plugin name is unknown or a plugin could not be used."""


class TrainingInterruptedError(CxrError):
    """Training stopped by Ctrl-C after saving a snapshot (exit status 130)."""
