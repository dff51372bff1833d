"""The errors a user can fix, in a module with no heavy imports, so the command line can catch them cheaply.

Every one carries a message that names the bad value and what is allowed; the
``altlens`` command prints it as one line and exits with code 2.
"""


class AltlensError(Exception):
    """A problem with what the user asked for (a value, a file, a workspace), not a bug."""


class SourceError(AltlensError, ValueError):
    """A source argument that cannot be read; the message names the value and what is allowed."""


class ModelError(AltlensError, ValueError):
    """A model could not be resolved or loaded; the message names the bad value."""


class WorkspaceError(AltlensError, RuntimeError):
    """The workspace is missing, locked, of a schema this altlens does not know, or lacks a stage's output."""
