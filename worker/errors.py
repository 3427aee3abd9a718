"""The project's error tree: every error the worker raises on purpose derives from one base,
so callers (the CLI, the service) can tell our own refusals from bugs."""


class SegmentWorkerError(Exception):
    """Raised when segment-worker refuses or cannot do something: the base of our errors."""


class UsageError(SegmentWorkerError):
    """Raised when a command cannot run with an option as given (a malformed value, or one
    that needs what is not available); the message names the option as the user typed it."""
