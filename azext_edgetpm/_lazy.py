"""Validators, table transformers and the exception handler, named instead of imported.

az builds the command table, and the arguments of the command being run, before anything runs:
whatever commands.py or _params.py import at that point every `az edge-tpm ...` pays for, even
`-h`. azure-cli-core (2.91) takes only functions for ``validator=`` and ``exception_handler=``
(a string ``table_transformer=`` is a JMESPath query), so these stand in for them: a `Named`
function is imported from its module the first time az calls it, i.e. when that command runs.

Write every new one this way::

    # commands.py
    g.custom_command("show", "thing_show", validator=command_validator("validate_thing"),
                     table_transformer=table("thing_table"))
    # _params.py
    c.argument("size", validator=validator("validate_size"))

(`validate_thing`, `validate_size` in _validators.py, `thing_table` in _format.py.) az (knack)
runs the validators of a command's arguments only when the command has no validator of its own;
every command here has one, and `command_validator` runs the arguments' validators first, so an
argument's validator always runs. test_load.py checks that every name resolves and that building
the table and the arguments imports neither module.
"""

_VALIDATORS = "azext_edgetpm._validators"
_FORMAT = "azext_edgetpm._format"
_ERROR_MAP = "azext_edgetpm._error_map"


class Named:
    """A function named by module and attribute, imported on its first call.

    az passes a validator only the parameters its signature asks for (``cmd``, ``namespace``),
    so the signature is the named function's own (read, and the module imported, only when az
    asks for it at run time)."""

    __slots__ = ("module", "name", "_function")

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name
        self._function = None

    def resolve(self):
        """The function itself (importing its module the first time)."""
        if self._function is None:
            from importlib import import_module
            self._function = getattr(import_module(self.module), self.name)
        return self._function

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect
        return inspect.signature(self.resolve())

    def __repr__(self):
        return f"<{self.module}.{self.name}>"


def _wanted(function, cmd, namespace) -> dict:
    """The keyword arguments az gives a validator: those its signature names (cmd, namespace, ns)."""
    import inspect
    names = inspect.signature(function).parameters
    given = {"cmd": cmd, "namespace": namespace, "ns": namespace}
    return {name: value for name, value in given.items() if name in names}


class CommandValidator(Named):
    """A command's validator, by name, run after the validators of the command's arguments (which
    az itself runs only for a command without a validator)."""

    __slots__ = ()

    def __call__(self, cmd, namespace):  # pylint: disable=arguments-differ
        for argument_validator in getattr(namespace, "_argument_validators", None) or ():
            argument_validator(**_wanted(argument_validator, cmd, namespace))
        if hasattr(namespace, "_argument_validators"):
            delattr(namespace, "_argument_validators")
        function = self.resolve()
        return function(**_wanted(function, cmd, namespace))

    @property
    def __signature__(self):
        import inspect
        return inspect.signature(self.__call__)  # (cmd, namespace): each validator gets what it asks for


def command_validator(name: str) -> CommandValidator:
    """A command's validator of _validators.py, by name (commands.py)."""
    return CommandValidator(_VALIDATORS, name)


def validator(name: str) -> Named:
    """An argument's validator of _validators.py, by name (_params.py)."""
    return Named(_VALIDATORS, name)


def table(name: str) -> Named:
    """A table transformer of _format.py, by name."""
    return Named(_FORMAT, name)


def exception_handler() -> Named:
    """_error_map's exception handler: domain errors become azclierror errors."""
    return Named(_ERROR_MAP, "exception_handler")


def name_options():
    """Gives domain errors the flags of the options they name (errors.option): called when an
    edge-tpm command runs, before its function (a fleet records per-device errors as it goes)."""
    from azext_edgetpm._error_map import register_option_names
    register_option_names()
