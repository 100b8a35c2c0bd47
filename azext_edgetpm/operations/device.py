"""How to reach one device: SSH options, the sudo password policy, and one session per use."""
from dataclasses import dataclass, field
from typing import Callable, Optional

from azext_edgetpm.errors import AuthError, MissingInputError, option

SUDO_PASSWORD_ENV = "AZ_EDGETPM_SUDO_PASSWORD"


@dataclass(frozen=True)
class SshOptions:
    """Everything needed to open a RemoteSession to one device.

    ``sudo_password``: a callable (target -> password) used when sudo asks for one; None means
    the interactive default (environment variable, then a prompt on a terminal). Work that runs
    in parallel passes ``non_interactive_sudo(...)`` so that nobody is ever prompted.
    """
    host: str
    ssh_user: Optional[str] = None
    ssh_port: Optional[int] = None
    ssh_key: Optional[str] = None
    ssh_config: Optional[str] = None
    known_hosts: Optional[str] = None
    accept_new_host_key: bool = False
    ssh_timeout: Optional[float] = None
    sudo_password: Optional[Callable] = field(default=None, repr=False, compare=False)

    @classmethod
    def from_args(cls, host, **kwargs) -> "SshOptions":
        if not host:
            raise MissingInputError("No device given.",
                                    f"Pass {option('host')} [user@]host[:port] (or {option('local')} for this "
                                    "machine's TPM).", "host")
        return cls(host=host, **kwargs)

    def target(self):
        from azext_edgetpm.remote.target import resolve_target
        return resolve_target(self.host, ssh_user=self.ssh_user, ssh_port=self.ssh_port, ssh_key=self.ssh_key,
                              ssh_config=self.ssh_config, connect_timeout=self.ssh_timeout or 15.0)

    def session(self):
        """A RemoteSession, NOT connected yet: `with opts.session() as session:` connects once."""
        from azext_edgetpm.remote.session import RemoteSession
        return RemoteSession(self.target(), known_hosts=self.known_hosts,
                             accept_new_host_key=self.accept_new_host_key, sudo_password=self.sudo_password)

    # (kept for callers of the first version: the same unconnected session)
    open = session


def non_interactive_sudo(password: Optional[str] = None, env_name: Optional[str] = None) -> Callable:
    """A sudo password source that never prompts: the given password, else the named environment
    variable (default AZ_EDGETPM_SUDO_PASSWORD), else an AuthError naming both ways."""
    import os

    def provide(target) -> str:
        if password:
            return password
        name = env_name or SUDO_PASSWORD_ENV
        value = os.environ.get(name)
        if value:
            return value
        raise AuthError(
            f"sudo on {target.display} needs a password for {target.user}, and none was given for it "
            f"(environment variable {name} is not set); parallel work never prompts.",
            f"Set {name} (in a pipeline, from a secret variable), or name another variable with the inventory's "
            "sudo_password_env; or configure NOPASSWD sudo, or log in as root.")
    return provide
