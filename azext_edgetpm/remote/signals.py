"""Stopping remote work that nobody waits for any more: a command that timed out, or that az
was interrupted in (Ctrl+C, SIGTERM, a fleet's stop request), is stopped on the device too, so
that nothing (an apt-get update, say) goes on there without anyone waiting for it.

Every command first reports its process group on stderr (PGID_LINE, taken out of the output
again); to stop it, SIGTERM goes through its channel and a second command signals what is left of
the group. While a session is connected, SIGTERM ends az the way Ctrl+C does (Terminated).
"""
import re
import shlex
import socket
import time
from typing import Optional

import paramiko
from knack.log import get_logger

from azext_edgetpm.stop import STOP

from .target import SshTarget

logger = get_logger(__name__)

SIGNAL_GRACE = 0.5             # seconds a stopped command has to end on its channel's SIGTERM


# Every command first reports its process group on stderr (the line is taken out again), so
# that an abandoned command can be stopped: sshd makes each session's shell a group leader, and
# sudo (use_pty) runs the command in a group of its own.
REPORT_PGID = '{ read -r _ _ _ _ P _ < /proc/$$/stat; } 2>/dev/null; echo "@@EDGETPM-PGID ${P:-$$}" >&2\n'
PGID_LINE = re.compile(rb"^@@EDGETPM-PGID \d+\n", re.MULTILINE)


class Terminated(KeyboardInterrupt):
    """SIGTERM while a session was open: handled like Ctrl+C (the remote command is stopped)."""


class StopsRemoteWork:
    """RemoteSession's part that stops abandoned commands (a mixin: it uses the session's
    connection and the sudo password its commands used)."""
    client: Optional[paramiko.SSHClient]
    target: SshTarget
    is_root: bool
    _sudo_needs_password: bool
    _sudo_password: Optional[str]
    _previous_sigterm = None              # SIGTERM's handler before connect() trapped it

    def _trap_sigterm(self) -> None:
        """While connected, SIGTERM (a CI job cancelled, `kill`) ends az the way Ctrl+C does, so
        that a running command is stopped on the device before az exits (main thread only:
        Python delivers signals there)."""
        import signal
        import threading
        if self._previous_sigterm is not None or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous not in (signal.SIG_DFL, None):
            return  # someone (az itself, a host application) handles SIGTERM already

        def terminated(signum, frame):
            raise Terminated("az was asked to stop (SIGTERM).")

        signal.signal(signal.SIGTERM, terminated)
        self._previous_sigterm = previous

    def _release_sigterm(self) -> None:
        """SIGTERM's handler as it was before connect()."""
        if self._previous_sigterm is not None:
            import signal
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    @staticmethod
    def _stderr_so_far(chan, progress: dict) -> bytes:
        """The start of the command's stderr, read on until the process-group line is there
        (it comes first; a command interrupted at once may not have sent it yet: up to ~2 s)."""
        data = progress["stderr"]
        deadline = time.monotonic() + 2.0
        try:
            while _pgid(data) is None and time.monotonic() < deadline and not chan.closed:
                if chan.recv_stderr_ready():
                    data += chan.recv_stderr(4096)
                elif chan.exit_status_ready():
                    break
                else:
                    time.sleep(0.05)
        except (paramiko.SSHException, EOFError, OSError, socket.timeout):
            pass
        return data

    def _stop_remote(self, chan, progress: dict, as_root: bool) -> None:
        """Stop an abandoned command: SIGTERM through its own channel (RFC 4254 6.9: OpenSSH's sshd
        signals the session's process group, and sudo relays it to the command); at the same time a
        second command gives it SIGNAL_GRACE seconds to end, then sends what is left of its process
        group SIGTERM and, half a second later, SIGKILL (for a server that refuses channel signals -
        OpenSSH does for root logins, which have no privilege separation after login -, a command
        that ignores SIGTERM, or a child that sudo did not pass it to)."""
        pgid = _pgid(self._stderr_so_far(chan, progress))
        transport = self.client.get_transport() if self.client else None
        if transport is None or not transport.is_active():
            return
        if not chan.closed and not chan.exit_status_ready():
            _send_signal(chan, "TERM")
        if not pgid or pgid <= 1:
            return
        ticks = max(1, int(SIGNAL_GRACE * 10))
        script = (f"i=0; while kill -0 -{pgid} 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done; "
                  f"kill -TERM -{pgid} 2>/dev/null || exit 0; i=0; "
                  f"while kill -0 -{pgid} 2>/dev/null && [ $i -lt 5 ]; do sleep 0.1; i=$((i+1)); done; "
                  f"kill -KILL -{pgid} 2>/dev/null; exit 0")
        try:
            # (a fleet that is stopping does not wait: once started, the script runs to its end on the
            # device whatever becomes of this process)
            if self._launch(script, as_root, wait=0 if STOP.is_set() else 5):
                logger.warning("Stopped the command left running on %s.", self.target.display)
            else:
                logger.warning("Stopping the command left running on %s (SIGTERM, then SIGKILL).", self.target.display)
        except (paramiko.SSHException, EOFError, OSError) as exc:  # best effort, the original error matters
            logger.warning("Could not stop the command left running on %s: %s", self.target.display, exc)

    def _launch(self, script: str, as_root: bool, wait: float) -> bool:
        """Start `script` on the device (as root through sudo when `as_root`) without reading its
        output; True when it ended within `wait` seconds with 0. Once started it runs to its end on
        the device even if this process exits (no terminal: nothing hangs it up). The sudo password,
        when one is needed, is the one this session's commands already used (on stdin)."""
        stdin = None
        if as_root and not self.is_root:
            if self._sudo_needs_password and self._sudo_password is not None:
                script, stdin = "sudo -S -p '' -- sh -c " + shlex.quote(script), (self._sudo_password + "\n").encode()
            else:
                script = "sudo -n -- sh -c " + shlex.quote(script)
        chan = self.client.get_transport().open_session(timeout=min(3.0, self.target.connect_timeout))
        chan.exec_command(script)
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        return wait > 0 and chan.status_event.wait(wait) and chan.recv_exit_status() == 0


def _send_signal(chan, name: str) -> None:
    """A "signal" channel request (RFC 4254 6.9), which paramiko's Channel has no method for;
    built as paramiko's own requests are (Channel.resize_pty). Best effort: no reply is asked for."""
    from paramiko.common import cMSG_CHANNEL_REQUEST
    from paramiko.message import Message
    message = Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(chan.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string(name)
    try:
        chan.transport._send_user_message(message)  # pylint: disable=protected-access
    except (paramiko.SSHException, EOFError, OSError):
        pass


def _pgid(stderr: bytes) -> Optional[int]:
    match = re.search(rb"^@@EDGETPM-PGID (\d+)$", stderr or b"", re.MULTILINE)
    return int(match.group(1)) if match else None
