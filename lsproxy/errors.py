"""The project's own exceptions, one per boundary.

Each carries a message that is safe to log: it never contains a secret.
"""


class LsproxyError(Exception):
    """Base class for every error lsproxy raises on purpose."""


class ConfigError(LsproxyError):
    """The configuration is unusable. The message names file, key and problem."""


class FramingError(LsproxyError):
    """The upstream body is not a valid gzip stream of CRLF-separated records."""


class RedirectError(LsproxyError):
    """An upstream redirect cannot be followed (no Location, bad scheme, too many hops)."""


class BindError(LsproxyError):
    """The consumer listen address cannot be bound (in use, not local, no permission)."""


class CredentialsError(LsproxyError):
    """No usable access token could be had. The message never contains a secret."""
