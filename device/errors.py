"""Errors the device reports to a person.

Every error that can reach a command line is a ``DanceSamplerError`` whose message
is one line naming the file, key or value at fault and what was expected. Each
subclass also inherits the matching built-in, so callers outside the project can
catch ``ValueError`` or ``OSError`` as usual.
"""


class DanceSamplerError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(DanceSamplerError, ValueError):
    """A configuration file or option is missing, malformed or out of range."""


class BundleError(DanceSamplerError, ValueError):
    """A model bundle is missing, corrupted, or does not match this device."""


class CameraError(DanceSamplerError, OSError):
    """A camera or video source cannot be opened or read."""


class AudioError(DanceSamplerError, OSError):
    """An audio device or file cannot be opened or written."""


class ControlsError(DanceSamplerError, OSError):
    """The buttons or the status light cannot be opened."""


class SessionError(DanceSamplerError, ValueError):
    """A take folder is missing, malformed, or cannot be written."""


class ModelRuntimeError(DanceSamplerError, ImportError):
    """No TFLite runtime is installed, or the one asked for is missing."""
