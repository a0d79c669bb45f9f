"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class NriRayError(Exception):
    """Base of every error caused by the user's input (files, flags, config values)."""


class ConfigError(NriRayError, ValueError):
    """An invalid configuration value; the message names the field, the value and what is allowed."""


class DataError(NriRayError):
    """An invalid or unreadable dataset; the message names the file and field."""
