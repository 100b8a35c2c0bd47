"""Files to a device: one SFTP channel per session for uploads, a private staging place per login
user for what root then puts in place, and install_file, which replaces a file atomically as root.
"""
import re
import shlex
from typing import Callable, Optional

import paramiko

from azext_edgetpm.errors import EdgeTpmError, LocalFileError, TransientError

from .target import SshTarget

# Where uploads wait until root puts them in place: one directory per login user, emptied by the
# first upload of every run (a dropped connection can leave a staged copy behind, never for long).
STAGING_ROOT = "/var/lib/edge-tpm/staging"


class TransfersFiles:
    """RemoteSession's file transfer (a mixin: it uses the session's connection and commands)."""
    client: Optional[paramiko.SSHClient]
    target: SshTarget
    run: Callable
    _lost: Callable[[Exception], TransientError]
    _sftp = None                          # one SFTP channel for the session's uploads, opened on first use
    _staging_base: Optional[str] = None   # STAGING_ROOT/<user>, made anew by the session's first use

    def _sftp_channel(self):
        """The session's SFTP channel (one for all its uploads: each channel costs round trips)."""
        if self._sftp is None or self._sftp.sock.closed:
            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise LocalFileError(
                    f"The SSH server of {self.target.display} offers no SFTP, which is needed to copy files: "
                    f"{exc or type(exc).__name__}",
                    "Enable SFTP on the device (OpenSSH: `Subsystem sftp internal-sftp` in /etc/ssh/sshd_config; "
                    "Dropbear: install openssh-sftp-server), then run the command again.") from exc
        return self._sftp

    def upload(self, data: bytes, remote_path: str, mode: int = 0o600, exclusive: bool = False) -> None:
        """Write bytes to a path the login user may write, through SFTP (`exclusive`: the file must
        not exist yet)."""
        sftp = self._sftp_channel()
        try:
            with sftp.open(remote_path, "wxb" if exclusive else "wb") as handle:
                handle.chmod(mode)
                handle.write(data)
        except OSError as exc:
            raise LocalFileError(f"Cannot write {remote_path} on {self.target.display}: {exc}",
                                 "Check the free space and permissions on the device.") from exc
        except (paramiko.SSHException, EOFError) as exc:
            self._sftp = None
            raise self._lost(exc) from exc

    def staging_dir(self) -> str:
        """A new private directory for uploads under the fixed staging place of the login user,
        STAGING_ROOT/<user> (0700, the user's; STAGING_ROOT is root's, 0711). The session's first
        call empties that place, so that what an earlier run left there (its connection dropped
        between upload and cleanup) is gone once this run starts staging."""
        base = self._staging_place()
        made = self.run(f"umask 077; mktemp -d {shlex.quote(base)}/run.XXXXXX").stdout.strip()
        if not made.startswith(base + "/run."):
            raise LocalFileError(f"Cannot create a staging directory under {base} on {self.target.display}.",
                                 "Check the free space on the device.")
        return made

    def _staging_place(self) -> str:
        """STAGING_ROOT/<user>, emptied (made anew) on the session's first call."""
        import hashlib
        user = self.target.user or "root"
        name = user if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", user) else \
            "u-" + hashlib.sha256(user.encode()).hexdigest()[:16]  # never a path of its own
        base = f"{STAGING_ROOT}/{name}"
        if self._staging_base is None:
            q = shlex.quote(base)
            result = self.run(f"umask 022; mkdir -p {STAGING_ROOT} && chmod 0711 {STAGING_ROOT} && rm -rf -- {q} && "
                              f"mkdir -m 0700 -- {q} && chown -- {shlex.quote(user)}: {q}", sudo=True)
            if not result.ok:
                raise LocalFileError(
                    f"Cannot prepare the staging directory {base} on {self.target.display}: "
                    f"{result.stderr.strip()[-300:]}", "Check the free space and permissions under /var/lib on the "
                    "device.")
            self._staging_base = base
        return base

    def install_file(self, data: bytes, dest: str, mode: int = 0o600, owner: str = "root",
                     group: str = "root") -> None:
        """Atomically replace `dest` (as root) with `data`: the bytes go to a private staging
        directory over SFTP, then `install` writes `dest.tmp-edgetpm` with the final mode and
        owner next to `dest`, and `mv -f` renames it into place. A failure leaves `dest` as it was.
        """
        import secrets
        # The staging place is this session's (made anew by its first use, 0700, the login
        # user's): a random name in it needs no directory of its own.
        staged = f"{self._staging_place()}/{secrets.token_hex(8)}.payload"
        try:
            self.upload(data, staged, 0o600, exclusive=True)
        except BaseException:
            try:
                self.run(f"rm -f -- {shlex.quote(staged)}")
            except EdgeTpmError:
                pass  # (a lost connection: the next run's first staging empties the place)
            raise
        part = dest + ".tmp-edgetpm"
        q_staged, q_part = shlex.quote(staged), shlex.quote(part)
        # One command: install, rename into place, and remove the staged copy whatever happened.
        script = (f"install -m {mode:o} -o {shlex.quote(owner)} -g {shlex.quote(group)} {q_staged} {q_part} "
                  f"&& mv -f {q_part} {shlex.quote(dest)}; rc=$?; rm -f -- {q_staged} {q_part}; exit $rc")
        result = self.run(script, sudo=True)
        if not result.ok:
            raise LocalFileError(f"Cannot write {dest} on {self.target.display}: {result.stderr.strip()}",
                                 "Check the free space and permissions on the device.")
