"""Project error types. Each message says what went wrong and what to do about it."""


class CotaforgeError(Exception):
    """A run could not go on; the CLI prints the message and exits non-zero."""


class ConfigError(CotaforgeError, ValueError):
    """The configuration or command line is invalid."""


class InputError(CotaforgeError, ValueError):
    """No readable input: a manifest is missing, malformed or empty."""
