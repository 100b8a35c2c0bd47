"""Validators, table transformers and the exception handler, named instead of imported.

az builds the command table, and the arguments of the command being run, before anything runs:
whatever commands.py or _params.py import at that point every `az edge-tpm ...` pays for, even
`-h`. azure-cli-core (2.91) takes only functions for ``validator=`` and ``exception_handler=``
(a string ``table_transformer=`` is a JMESPath query), so these stand in for them: a `Named`
function is imported from its module the first time az calls it, i.e. when that command runs.

Write every new one this way, in commands.py or _params.py::

    g.custom_command("show", "thing_show", validator=validator("validate_thing"),
                     table_transformer=table("thing_table"))
    c.argument("size", validator=validator("validate_size"))

(`validate_thing` in _validators.py, `thing_table` in _format.py.) test_load.py checks that
every name resolves and that building the table imports neither module.
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


def validator(name: str) -> Named:
    """A validator of _validators.py, by name (command-level or on one argument)."""
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
