"""Runs `az` commands in-process, the way the Azure CLI's own test SDK does, and hands back
the exit code, the parsed JSON output and the error object (with its recommendation)."""
import io
import json
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class AzResult:
    rc: int
    out: Any
    text: str
    error: Optional[BaseException]
    stderr: str

    @property
    def message(self) -> str:
        return str(self.error) if self.error else ""

    @property
    def recommendation(self) -> str:
        recs = getattr(self.error, "recommendations", None) or []
        return " ".join(recs)


def az(*args, output="json", env=None) -> AzResult:
    """`az <args> -o <output>` in this process. Errors are returned, not raised."""
    import contextlib
    import os
    from unittest import mock
    from azure.cli.core import get_default_cli
    cli = get_default_cli()
    out, err = io.StringIO(), io.StringIO()
    argv = list(args) + (["-o", output] if output else [])
    with mock.patch.dict(os.environ, env or {}), contextlib.redirect_stderr(err):
        # (mock.patch.dict only scopes environment variables for this call; nothing is faked.)
        try:
            rc = cli.invoke(argv, out_file=out)
        except SystemExit as exc:  # -h and argument errors end in SystemExit, as in the real az
            rc = exc.code if isinstance(exc.code, int) else 1
    text = out.getvalue()
    parsed = None
    if output == "json" and text.strip():
        parsed = json.loads(text)
    error = getattr(getattr(cli, "result", None), "error", None)
    if isinstance(error, SystemExit) and isinstance(error.__cause__, Exception):
        error = error.__cause__   # (a fleet's own exit code: the error printed is the exit's cause)
    return AzResult(rc, parsed, text, error, err.getvalue())
