"""TOML reading for the stand-in runtime on any Python a device has.

Python >= 3.11 has ``tomllib``. Older device Pythons (Debian 11 has 3.9) do not: there the
stand-in uses tomlkit, which aziot-identity-service ships in /usr/lib/aziot-standin/compat
(taken from the devkit's environment when the package is built), and its errors are worded
as tomllib's ("<what> (at line L, column C)") so that callers see one format.
"""
import os
import re
import sys

try:
    import tomllib as _tomllib
except ModuleNotFoundError:  # Python < 3.11
    _tomllib = None

if _tomllib is not None:
    TOMLDecodeError = _tomllib.TOMLDecodeError
    loads = _tomllib.loads
    load = _tomllib.load
else:
    _COMPAT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compat")
    if _COMPAT not in sys.path:
        sys.path.insert(0, _COMPAT)
    import tomlkit as _tomlkit  # noqa: E402  (bundled, path set just above)
    from tomlkit.exceptions import ParseError as _ParseError  # noqa: E402

    class TOMLDecodeError(ValueError):
        """A TOML syntax error, worded as tomllib words it."""

    def loads(text):
        """Parse TOML text into plain dicts, lists and values."""
        try:
            return _tomlkit.parse(text).unwrap()
        except _ParseError as err:
            msg = str(err)
            m = re.match(r"^(.*) at line (\d+) col (\d+)$", msg)
            if m:
                msg = "%s (at line %s, column %s)" % (m.group(1), m.group(2), m.group(3))
            raise TOMLDecodeError(msg) from None

    def load(fileobj):
        """Parse a binary file object (as tomllib.load)."""
        data = fileobj.read()
        return loads(data.decode("utf-8") if isinstance(data, bytes) else data)
