"""The control plane's exception hierarchy.

Every error a request can end in is a ``FlowyardError``; the API layer maps each class to one
gRPC status code in one place (``control_plane.api.errors``), so a user mistake is never
INTERNAL and a status message never carries a traceback::

    FlowyardError
    ├── InvalidArgument      malformed request: the message names the field    INVALID_ARGUMENT
    ├── NotFound             unknown pool, deployment or run                   NOT_FOUND
    ├── AlreadyExists        a name that is taken                              ALREADY_EXISTS
    ├── FailedPrecondition   the current state forbids it (run finished, ...)  FAILED_PRECONDITION
    ├── Aborted              concurrent changes kept winning; retry the call   ABORTED
    ├── Unauthenticated      no credentials                                    UNAUTHENTICATED
    └── PermissionDenied     credentials outside their scope                   PERMISSION_DENIED
"""


class FlowyardError(Exception):
    """Base of every error the control plane reports to a caller."""


class InvalidArgument(FlowyardError):
    """The request is malformed; the message names the field and the problem."""


class NotFound(FlowyardError):
    """The pool, deployment or run named by the request does not exist."""


class AlreadyExists(FlowyardError):
    """The name in the request is already taken."""


class FailedPrecondition(FlowyardError):
    """The request is well-formed but the current state forbids it."""


class Aborted(FlowyardError):
    """What the request depends on kept changing under it; retrying the call is safe."""


class Unauthenticated(FlowyardError):
    """The request carries no valid credentials."""


class PermissionDenied(FlowyardError):
    """The credentials are valid but do not cover this request."""
