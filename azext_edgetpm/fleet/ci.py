"""Azure Pipelines logging commands for fleet runs (written on stderr: stdout stays the command's
JSON/table, and the agent reads logging commands from both streams of a script step).

Formats (Microsoft's "Logging commands" page): `##vso[area.action property=value;...]message`.
A property value escapes `%` (as `%AZP25`), CR, LF, `]` and `;`; a message escapes `%`, CR and LF
(as azure-pipelines-task-lib's escapeData/escape do): one command stays one line, and a device's
error text can neither end the command early nor start another.
"""
import os
import sys
from typing import Optional

AZURE_PIPELINES = "azure-pipelines"
CI_FORMATS = (AZURE_PIPELINES, "none")


def escape_data(text) -> str:
    return str(text).replace("%", "%AZP25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text) -> str:
    return escape_data(text).replace("]", "%5D").replace(";", "%3B")


def command(area_action: str, message: str = "", **properties) -> str:
    props = ";".join(f"{k}={escape_property(v)}" for k, v in properties.items() if v is not None)
    return f"##vso[{area_action}{' ' + props if props else ''}]{escape_data(message)}"


def detect(ci_format: Optional[str] = None, environ=None) -> Optional[str]:
    """The CI format to write: --ci-format, else Azure Pipelines when TF_BUILD is set (the agent
    sets TF_BUILD=True in every step)."""
    environ = os.environ if environ is None else environ
    if ci_format:
        return None if ci_format == "none" else ci_format
    return AZURE_PIPELINES if str(environ.get("TF_BUILD", "")).lower() == "true" else None


def device_name(result) -> str:
    """The device as a user finds it: the host as written, and its IoT Hub device ID once known."""
    device_id = getattr(result, "device_id", None)
    return f"{result.host} (device {device_id})" if device_id else result.host


def reason(result) -> str:
    step = f" at step {result.failed_step}" if result.failed_step else ""
    first = str(result.error or result.status).strip().splitlines()
    return f"{step.strip()}: {first[0]}" if step else (first[0] if first else result.status)


class AzurePipelines:
    """Writes the logging commands of one fleet run as its devices end."""

    def __init__(self, total: int, stream=None):
        self.total = max(0, int(total))
        self.stream = stream or sys.stderr
        self.ended = 0
        self._last_value = -1

    def write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def device_ended(self, result, failed: bool) -> None:
        self.ended += 1
        if failed:
            self.write(command("task.logissue", f"{device_name(result)}: {reason(result)}", type="error"))
        value = 100 if self.total == 0 else min(100, self.ended * 100 // self.total)
        if value != self._last_value:
            self._last_value = value
            self.write(command("task.setprogress", "Devices finished", value=value))

    def summary(self, markdown_path: str) -> None:
        self.write(command("task.uploadsummary", os.path.abspath(markdown_path)))

    def complete(self, result: str, message: str) -> None:
        self.write(command("task.complete", message, result=result))
