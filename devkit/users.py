"""Login users of simulated devices and their keys.

Every device has the same four accounts (one key pair per account and rig, ed25519, under
``DIR/keys``):

- ``root``: key login;
- ``admin``: non-root, sudo without password (NOPASSWD);
- ``pwadmin``: non-root, sudo asks for its password (in group ``sudo``, like Debian's
  first user); the password is random per rig and recorded in devkit.json;
- ``nosudo``: non-root, no sudo rights at all.

The account database files are rendered here from the host's own ``/etc/passwd`` etc. (the
device's root file system is an overlay of the host's ``/``) and written into the device
when it boots, which is much faster than running useradd in every device.
"""
import os
import secrets
import subprocess
import time
from dataclasses import dataclass

SUDO_NONE = "none"
SUDO_NOPASSWD = "nopasswd"
SUDO_PASSWORD = "password"


@dataclass(frozen=True)
class Account:
    """One login account of the devices."""

    name: str
    sudo: str  # "root" for root itself, else one of SUDO_*
    uid: int = 0
    gid: int = 0

    @property
    def home(self):
        """Home directory inside the device."""
        return "/root" if self.name == "root" else "/home/" + self.name


ACCOUNT_SUDO = {"root": "root", "admin": SUDO_NOPASSWD, "pwadmin": SUDO_PASSWORD,
                "nosudo": SUDO_NONE}


def ensure_keys(key_dir):
    """Create (once) an ed25519 key pair per account; return {name: private key path}."""
    os.makedirs(key_dir, mode=0o700, exist_ok=True)
    paths, procs = {}, []
    for name in ACCOUNT_SUDO:
        path = os.path.join(key_dir, name)
        paths[name] = path
        if not (os.path.exists(path) and os.path.exists(path + ".pub")):
            for p in (path, path + ".pub"):
                if os.path.exists(p):
                    os.unlink(p)
            procs.append(subprocess.Popen(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "devkit-" + name,
                 "-f", path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("ssh-keygen failed for a devkit user key in %s" % key_dir)
    return paths


def ensure_password(path):
    """Return the rig's pwadmin password, creating it (mode 0600) on first use."""
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as f:
            return f.read().strip()
    password = "pw-" + secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    return password


def hash_password(password):
    """SHA-512 crypt hash (``openssl passwd -6``; the password goes through stdin)."""
    proc = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def _read_lines(path):
    with open(path, "r", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


class AccountDb:
    """The device's passwd/shadow/group/gshadow: the host's files plus our accounts."""

    def __init__(self, etc="/etc"):
        self.passwd = _read_lines(os.path.join(etc, "passwd"))
        self.group = _read_lines(os.path.join(etc, "group"))
        self.shadow = _read_lines(os.path.join(etc, "shadow"))
        self.gshadow = _read_lines(os.path.join(etc, "gshadow"))
        for name in ACCOUNT_SUDO:
            if name != "root":
                self._drop(name)
        # The host root's password must not leak into devices: key login only.
        self.shadow = [self._set_hash(line, "*") if line.startswith("root:") else line
                       for line in self.shadow]

    def _drop(self, name):
        """Forget a host entry of the same name (so ours is the only one)."""
        def keep(line):
            return line.split(":", 1)[0] != name
        self.passwd = [x for x in self.passwd if keep(x)]
        self.group = [x for x in self.group if keep(x)]
        self.shadow = [x for x in self.shadow if keep(x)]
        self.gshadow = [x for x in self.gshadow if keep(x)]

    @staticmethod
    def _set_hash(line, hashed):
        fields = line.split(":")
        fields[1] = hashed
        return ":".join(fields)

    def _free_id(self, start=1500):
        used = {int(x.split(":")[2]) for x in self.passwd + self.group}
        n = start
        while n in used:
            n += 1
        return n

    def add(self, name, sudo, password_hash="*"):
        """Add a user with its own group; return the Account."""
        if name == "root":
            return Account("root", "root", 0, 0)
        uid = self._free_id()
        acct = Account(name, sudo, uid, uid)
        days = int(time.time() // 86400)
        self.passwd.append("%s:x:%d:%d:devkit %s:%s:/bin/bash" % (name, uid, uid, name,
                                                                  acct.home))
        self.group.append("%s:x:%d:" % (name, uid))
        self.shadow.append("%s:%s:%d:0:99999:7:::" % (name, password_hash, days))
        self.gshadow.append("%s:!::" % name)
        return acct

    def add_member(self, group, user):
        """Add ``user`` to an existing ``group`` (group and gshadow)."""
        def with_member(line, members_index):
            fields = line.split(":")
            if fields[0] != group:
                return line
            members = [m for m in fields[members_index].split(",") if m]
            if user not in members:
                members.append(user)
            fields[members_index] = ",".join(members)
            return ":".join(fields)
        self.group = [with_member(x, 3) for x in self.group]
        self.gshadow = [with_member(x, 3) for x in self.gshadow]

    def files(self):
        """{path: (text, mode)} of the rendered database."""
        return {
            "/etc/passwd": ("\n".join(self.passwd) + "\n", 0o644),
            "/etc/group": ("\n".join(self.group) + "\n", 0o644),
            "/etc/shadow": ("\n".join(self.shadow) + "\n", 0o640),
            "/etc/gshadow": ("\n".join(self.gshadow) + "\n", 0o640),
        }


def sudoers():
    """Content of /etc/sudoers.d/devkit."""
    return ("# devkit: admin may sudo without a password; pwadmin via group sudo (password);\n"
            "# nosudo has no rights.\n"
            "admin ALL=(ALL:ALL) NOPASSWD: ALL\n")


def build_accounts(password, etc="/etc"):
    """Render the account database for a rig (from the account files under ``etc``: the
    host's, or a device userland's): (accounts by name, AccountDb)."""
    db = AccountDb(etc)
    hashed = hash_password(password)
    accounts = {}
    for name, sudo in ACCOUNT_SUDO.items():
        accounts[name] = db.add(name, sudo, hashed if sudo == SUDO_PASSWORD else "*")
    db.add_member("sudo", "pwadmin")
    return accounts, db
