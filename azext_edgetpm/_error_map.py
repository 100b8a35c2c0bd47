"""The az face's side of the domain errors: each becomes one azclierror with a recommendation.

Used as the command groups' ``exception_handler``: whatever a command raises passes through
here; azclierror errors (raised by older adapters) go on unchanged.
"""

# dest name of an option -> the flag users type (for errors that name their field)
FLAGS = {
    "registration_id": "--registration-id", "device_id": "--device-id", "host": "--host",
    "inventory": "--inventory", "state": "--state", "shard": "--shard", "only": "--only",
    "max_parallel": "--max-parallel", "endorsement_key": "--endorsement-key", "id_scope": "--id-scope",
    "ssh_key": "--ssh-key", "tcti": "--tcti", "limit": "--limit", "edge_version": "--edge-version",
    "iot_hubs": "--iot-hubs", "initial_twin_tags": "--initial-twin-tags",
}


def to_azclierror(exc):
    """The azclierror for a domain error (anything else is returned as it is)."""
    from azure.cli.core import azclierror as az
    from azext_edgetpm import errors
    if not isinstance(exc, errors.EdgeTpmError):
        return exc
    classes = [
        (errors.MissingInputError, az.RequiredArgumentMissingError),
        (errors.LocalFileError, az.FileOperationError),
        (errors.UserInputError, az.InvalidArgumentValueError),
        (errors.DeviceError, az.ValidationError),
        (errors.UnreachableError, az.ClientRequestError),
        (errors.AuthError, az.UnauthorizedError),
        (errors.PermissionDeniedError, az.ForbiddenError),
        (errors.NotFoundError, az.ResourceNotFoundError),
        (errors.ConflictError, az.AzureResponseError),
        (errors.ServiceError, az.AzureResponseError),
        (errors.TransientError, az.AzureConnectionError),
        (errors.InterruptedWork, az.UnclassifiedUserFault),
    ]
    cls = next((c for d, c in classes if isinstance(exc, d)), az.UnclassifiedUserFault)
    message = exc.message
    flag = FLAGS.get(exc.field or "")
    if flag and flag not in message:
        message = f"{flag}: {message}"
    out = cls(message, exc.hint)
    out.__cause__ = exc
    return out


def exception_handler(exc):
    """az calls this with what a command raised; it must raise."""
    raise to_azclierror(exc) from exc
