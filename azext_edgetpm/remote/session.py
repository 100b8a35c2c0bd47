"""One SSH session to one device: sudo, quoting, running commands with timeouts and output limits.

Its parts: opening the connection (ProxyJump, ~/.ssh/config, agent and key files, retries of
transient connect failures: remote/connect.py) with the host key policy (remote/hostkeys.py);
stopping a command nobody waits for any more (remote/signals.py); file upload (remote/transfer.py).

Every failure a user can cause ends in one domain error (azext_edgetpm.errors) with a
recommendation, which the az face turns into one azclierror. Secrets (the sudo password) travel
only on the channel's stdin, never on a command line, in a log line or in an error message.
"""
import io
import os
import shlex
import time
from dataclasses import dataclass
from typing import Callable, Optional

import paramiko
from knack.log import get_logger

from azext_edgetpm.errors import (
    AuthError, DeviceError, PermissionDeniedError, TransientError, UnreachableError, UserInputError, option)
from azext_edgetpm.stop import STOP, stopped

from .connect import Connector
from .signals import PGID_LINE, REPORT_PGID, StopsRemoteWork
from .target import DEFAULT_KNOWN_HOSTS, SshTarget
from .transfer import TransfersFiles

logger = get_logger(__name__)

SUDO_PASSWORD_ENV = "AZ_EDGETPM_SUDO_PASSWORD"
MAX_OUTPUT_BYTES = 16 * 2**20  # per stream of one remote command


@dataclass
class Result:
    """What a remote command gave back."""
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class RemoteSession(StopsRemoteWork, TransfersFiles):
    """A connection to one device, used as a context manager.

    `run()` executes a shell command (a string the caller built with `shlex.quote` around
    every value), as root through sudo when `sudo=True` and the login user is not root.
    """

    def __init__(self, target: SshTarget, known_hosts: Optional[str] = None,
                 accept_new_host_key: bool = False,
                 sudo_password: Optional[Callable[[], str]] = None,
                 command_timeout: float = 300.0):
        self.target = target
        self.known_hosts = os.path.expanduser(known_hosts or DEFAULT_KNOWN_HOSTS)
        self.accept_new_host_key = accept_new_host_key
        self._sudo_password_cb = sudo_password or default_sudo_password
        self._sudo_password: Optional[str] = None
        self._sudo_needs_password = False
        self.command_timeout = command_timeout
        self._connector = Connector(self.known_hosts, accept_new_host_key)
        self._staging_base: Optional[str] = None
        self._sftp = None            # one SFTP channel for the session's uploads, opened on first use
        self._previous_sigterm = None
        self.client: Optional[paramiko.SSHClient] = None

    # -- connection ---------------------------------------------------------------------
    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def connect(self) -> "RemoteSession":
        """Connect (once: a session that is connected already is returned as it is)."""
        if self.client is not None:
            return self
        self.client = self._connector.open(self.target)
        self._trap_sigterm()  # (undone by close(); a failed connect leaves nothing to undo)
        return self

    def close(self) -> None:
        self._sftp = None            # (closed with its connection)
        self._connector.close()
        self.client = None
        self._release_sigterm()

    @property
    def is_root(self) -> bool:
        return self.target.user == "root"

    # -- commands -----------------------------------------------------------------------
    def run(self, command: str, sudo: bool = False, stdin: Optional[bytes] = None,
            timeout: Optional[float] = None) -> Result:
        """Run `command` with /bin/sh on the device; as root through sudo if asked.

        Sudo is tried without a password first (NOPASSWD); when the device asks for one, the
        password (environment variable or prompt) is written to sudo's stdin, never argv.
        """
        command = REPORT_PGID + command
        if not sudo or self.is_root:
            return self._exec(command, stdin, timeout)
        if not self._sudo_needs_password:
            result = self._exec("sudo -n -- sh -c " + shlex.quote(command), stdin, timeout, as_root=True)
            if "a password is required" not in result.stderr:
                return self._check_sudo(result)
            self._sudo_needs_password = True
        if stdin is not None:
            raise DeviceError("Internal: stdin cannot be combined with a sudo password.",
                              "Report this as a bug of az edge-tpm.")
        if self._sudo_password is None:
            self._sudo_password = self._sudo_password_cb(self.target)
        secret = (self._sudo_password + "\n").encode()
        result = self._exec("sudo -S -p '' -- sh -c " + shlex.quote(command), secret, timeout, as_root=True)
        return self._check_sudo(result)

    def _check_sudo(self, result: Result) -> Result:
        err = result.stderr
        if result.rc != 0 and ("is not in the sudoers file" in err or "is not allowed to run sudo" in err
                               or "may not run sudo" in err):
            raise PermissionDeniedError(
                f"{self.target.user} may not use sudo on {self.target.display}.",
                "Log in as root, or grant the user sudo rights on the device (e.g. add it to the "
                "sudo group), then run the command again.")
        if result.rc != 0 and ("incorrect password" in err or "Sorry, try again" in err
                               or "no password was provided" in err):
            self._sudo_password = None
            raise AuthError(
                f"sudo on {self.target.display} refused the password for {self.target.user}.",
                f"Set the right password in the environment variable {SUDO_PASSWORD_ENV}, or configure "
                "NOPASSWD sudo for this user.")
        if result.rc == 127 and ("sudo: not found" in err or "sudo: command not found" in err):
            raise DeviceError(f"sudo is not installed on {self.target.display}.",
                              "Install sudo on the device or log in as root.")
        return result

    def _exec(self, command: str, stdin: Optional[bytes], timeout: Optional[float], as_root: bool = False) -> Result:
        if "\x00" in command:  # (the face names the option; this is the last line of defence)
            raise UserInputError("A value holds a NUL character, which no remote command can carry.",
                                 "Remove the NUL character from the values given.")
        timeout = timeout or self.command_timeout
        if STOP.is_set():
            raise stopped()   # (a fleet run is stopping: no further command starts)
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise TransientError(f"The SSH connection to {self.target.display} was lost.",
                                 "Check the device's network and run the command again.")
        try:
            chan = transport.open_session(timeout=self.target.connect_timeout)
        except paramiko.ChannelException as exc:
            raise PermissionDeniedError(
                f"The SSH server of {self.target.display} refused to open a session for a command: {exc}",
                "Check sshd_config on the device (MaxSessions, ForceCommand, or a restricted account in "
                "authorized_keys): az edge-tpm runs ordinary shell commands.") from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from exc
        progress = {"stderr": b""}
        try:
            return self._exchange(chan, command, stdin, timeout, progress)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from exc
        except BaseException:
            # Timed out, or az interrupted (Ctrl+C, SIGTERM, a fleet's stop request): stop the command
            # on the device too, so that no remote work (an apt-get update, say) goes on without
            # anyone waiting for it.
            self._stop_remote(chan, progress, as_root)
            raise
        finally:
            chan.close()

    def _lost(self, exc: Exception) -> TransientError:
        return TransientError(f"The SSH connection to {self.target.display} failed during a command: {exc}",
                              "Check the device's network and run the command again; the steps can be "
                              "re-run safely.")

    def _exchange(self, chan, command: str, stdin: Optional[bytes], timeout: float, progress: dict) -> Result:
        chan.settimeout(1.0)
        chan.exec_command(command)
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = io.BytesIO(), io.BytesIO()
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        probe_after = max(self.target.connect_timeout, 2.0)
        while True:
            progressed = False
            while chan.recv_ready():
                out.write(chan.recv(65536))
                progressed = True
            while chan.recv_stderr_ready():
                err.write(chan.recv_stderr(65536))
                progressed = True
            if progressed and len(progress["stderr"]) < 200:
                progress["stderr"] = err.getvalue()[:200]  # (where the command's process group is named)
            if out.tell() > MAX_OUTPUT_BYTES or err.tell() > MAX_OUTPUT_BYTES:
                # a device answering with endless output (a broken or hostile tool) must not
                # exhaust this machine's memory: stop reading (closing the channel stops it)
                raise DeviceError(
                    f"A command on {self.target.display} printed more than {MAX_OUTPUT_BYTES // 2**20} MiB; "
                    "az edge-tpm stopped reading it.",
                    "Check the tools on the device (tpm2-tools, dpkg, iotedge): one of them prints far more "
                    "than it should, e.g. a wrapper script or a broken install.")
            # Done when the exit status is in AND the server said EOF (or closed): sshd may send the
            # exit status before the last of the command's stderr, which would otherwise be cut off.
            if (chan.exit_status_ready() and (chan.eof_received or chan.closed)
                    and not chan.recv_ready() and not chan.recv_stderr_ready()):
                break
            if STOP.is_set():
                raise stopped()   # (a fleet run is stopping: _exec stops the command on the device)
            if time.monotonic() > deadline:
                raise UnreachableError(
                    f"A command on {self.target.display} did not finish within {timeout:.0f}s.",
                    "Check the device's load and network; the step can be re-run safely.")
            if progressed:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > probe_after:
                # a long silent command: is the device still there? (A frozen or cut-off device
                # would otherwise keep us waiting for the whole command timeout.)
                if not _answers(chan.get_transport(), self.target.connect_timeout):
                    raise UnreachableError(
                        f"{self.target.display} stopped answering during a command (no reply to an SSH "
                        f"keepalive within {self.target.connect_timeout:.0f}s).",
                        "Check that the device is powered and reachable (network, load), then run the command "
                        f"again; the steps can be re-run safely. {option('ssh_timeout')} sets how long to wait.")
                quiet_since = time.monotonic()
            if not progressed:
                # Woken at once when the exit status arrives; output is drained every 0.25 s meanwhile
                # (a fleet runs many long commands at once: no 10 ms polling loop per device).
                if chan.status_event.is_set():
                    time.sleep(0.005)  # the exit status is in; its EOF is a packet away
                else:
                    chan.status_event.wait(0.25)
        rc = chan.recv_exit_status()
        if rc == -1 and not chan.get_transport().is_active():
            raise EOFError("the connection closed before the command ended")
        stderr = PGID_LINE.sub(b"", err.getvalue(), count=1)
        return Result(rc, out.getvalue().decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))


def _answers(transport, timeout: float) -> bool:
    """Whether the SSH server replies to a keepalive request within `timeout` seconds (any reply,
    OpenSSH's "request failed" included, shows it is alive). paramiko waits without a limit, so
    the request runs in a helper thread; it ends with the connection if the server never answers."""
    import threading
    if transport is None or not transport.is_active():
        return False
    replied = threading.Event()

    def ask():
        try:
            transport.global_request("keepalive@openssh.com", wait=True)
        except Exception:  # pylint: disable=broad-except  # a dead transport: no reply
            return
        if transport.is_active():
            replied.set()

    threading.Thread(target=ask, name="edgetpm-keepalive", daemon=True).start()
    return replied.wait(timeout)


def default_sudo_password(target: SshTarget) -> str:
    """The sudo password: from the environment variable, else a prompt on a terminal."""
    secret = os.environ.get(SUDO_PASSWORD_ENV)
    if secret:
        return secret
    from knack.prompting import NoTTYException, prompt_pass
    try:
        return prompt_pass(f"sudo password for {target.user} on {target.hostname}: ")
    except NoTTYException as exc:
        raise AuthError(
            f"sudo on {target.display} needs a password for {target.user}, and there is no terminal to ask on.",
            f"Put the password in the environment variable {SUDO_PASSWORD_ENV} (in a pipeline, from a "
            "secret variable), configure NOPASSWD sudo, or log in as root. (sudo asks for a password "
            "before it checks whether the user has sudo rights at all.)") from exc
