"""Typed errors. The CLI prints ``str(error)`` as one line; messages say what, expected, and how to fix."""


class AnomedgeError(Exception):
    """Base class of every error anomedge raises on purpose."""

    exit_code = 1


class ArtifactError(AnomedgeError):
    """An artifact folder is missing a file, tampered with, or made for another version/device."""

    exit_code = 2


class InputError(AnomedgeError):
    """A user-supplied input (image, array, option) is not what was expected."""

    exit_code = 2


class BackendUnavailable(AnomedgeError):
    """A backend's library or device is not present; the message names the pip install to run."""

    exit_code = 2


class SourceError(AnomedgeError):
    """A frame source (folder, file, camera, stream) cannot be opened or read."""

    exit_code = 2
