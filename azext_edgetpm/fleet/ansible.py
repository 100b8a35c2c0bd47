"""Ansible inventories, read through `ansible-inventory --list` (Ansible's own parser; we do not
parse its formats ourselves).

A static inventory (INI, Ansible YAML, TOML) is read with only Ansible's static inventory
plugins enabled, no ansible.cfg and no inventory or vars plugins from elsewhere: nothing in or
next to the file is executed, even when the file is executable. A dynamic inventory (an
executable script) runs only when the user names it so (`ansible-script`), with Ansible's
script plugin alone. Either way ansible-inventory's output is read up to a bound, and what it
says about a file that may hold proxy passwords is shown only with their pieces replaced.
"""
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

from azext_edgetpm.errors import LocalFileError, MissingInputError, UserInputError, option
from azext_edgetpm.files import LIMITS, size_text

ANSIBLE_VARS = {"ansible_host": "host", "ansible_user": "user", "ansible_port": "port",
                "ansible_ssh_private_key_file": "ssh_key", "ansible_private_key_file": "ssh_key"}
STATIC_PLUGINS = "ini,yaml,toml"   # Ansible's file parsers that run nothing ("auto" would load any plugin)
OUTPUT_LIMIT = 4 * LIMITS["inventory"]
TIMEOUT = 300


def rows(path: str, limit: Optional[str], columns, script: bool, file_text: str = ""):
    """[(source, {column: value})] of the hosts (of the groups in `limit`)."""
    exe = _executable(path)
    with tempfile.TemporaryDirectory(prefix="edgetpm-ansible-") as empty:
        env = dict(os.environ, ANSIBLE_INVENTORY_UNPARSED_FAILED="True", ANSIBLE_NOCOLOR="1")
        if script:
            if not os.access(path, os.X_OK) or not os.path.isfile(path):
                raise LocalFileError(
                    f"The inventory {path} is not an executable file, and {option('inventory_format')} "
                    "ansible-script runs it as a dynamic inventory.",
                    "Make it executable (chmod +x), or give the format of its content with "
                    f"{option('inventory_format')}.",
                    "inventory")
            env["ANSIBLE_INVENTORY_ENABLED"] = "script"
        else:
            config = os.path.join(empty, "ansible.cfg")
            open(config, "w", encoding="ascii").close()  # pylint: disable=consider-using-with
            env.update(ANSIBLE_INVENTORY_ENABLED=STATIC_PLUGINS, ANSIBLE_CONFIG=config, ANSIBLE_INVENTORY_PLUGINS=empty,
                       ANSIBLE_VARS_PLUGINS=empty, ANSIBLE_VARS_ENABLED="host_group_vars")
        # (static: run in an empty directory, so that no ansible.cfg or plugin of the caller's is read)
        rc, out, err = _run([exe, "-i", os.path.abspath(path), "--list"], env, cwd=None if script else empty)
    if rc != 0:
        said = scrub(err.decode("utf-8", "replace").strip(), file_text)[-500:]
        raise UserInputError(f"ansible-inventory could not read {path}: {said}",
                             "Fix the inventory (ansible-inventory -i FILE --list shows what Ansible makes of it).",
                             "inventory")
    try:
        data = json.loads(out)
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
    except (ValueError, RecursionError):
        raise UserInputError(f"ansible-inventory gave no inventory JSON for {path}.",
                             "Check the Ansible installation" + (" and what the script prints." if script else "."),
                             "inventory") from None
    meta = data.get("_meta")
    hostvars = meta.get("hostvars") if isinstance(meta, dict) else None
    hosts = _group_hosts(data, limit) if limit else _all_hosts(data)
    found = []
    for name in hosts:
        variables = hostvars.get(name) if isinstance(hostvars, dict) else None
        variables = variables if isinstance(variables, dict) else {}
        row = {"host": name}
        for var, column in ANSIBLE_VARS.items():
            if variables.get(var) is not None:
                row[column] = variables[var]
        for column in columns[1:]:
            if column in variables and column not in row:
                row[column] = variables[column]
        found.append((f"host {name}", row))
    return found


def _executable(path: str) -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-inventory")  # (a virtualenv not on PATH)
    exe = shutil.which("ansible-inventory") or (beside if os.access(beside, os.X_OK) else None)
    if not exe:
        raise MissingInputError(
            f"{path} is an Ansible inventory, and ansible-inventory (Ansible) is not installed here.",
            "Install Ansible (pip install ansible-core) to read Ansible inventories, or give the devices as "
            "CSV, YAML or JSON.", "inventory")
    return exe


def _run(argv, env, cwd):
    """(rc, stdout, stderr's last 64 KiB): stdout bounded, a time limit; the process is killed beyond either."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        try:
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UserInputError(f"ansible-inventory did not finish within {TIMEOUT} s.",
                                         "Check the inventory (a dynamic inventory script that hangs?).", "inventory")
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    if key.data is err and len(err) > 65536:
                        del err[:-65536]
                    if len(out) > OUTPUT_LIMIT:
                        raise UserInputError(
                            f"ansible-inventory printed more than {size_text(OUTPUT_LIMIT)} for the inventory.",
                            "Give a smaller inventory, or split it over several runs "
                            f"({option('limit')}, {option('shard')}).",
                            "inventory")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return proc.wait(), bytes(out), bytes(err)


def scrub(text: str, file_text: str) -> str:
    """Ansible's message about a file, with every piece of the file's text before the last @ of
    a line that holds one (where a proxy's user:password sits) replaced by ***: whole words and
    their letter-and-digit runs, since Ansible may quote any part of a line it cannot parse."""
    pieces = set()
    for line in file_text.splitlines():
        if "@" in line:
            secret = line[:line.rfind("@")]
            pieces.update(p for p in re.split(r"[\s\"'=,]+", secret) if len(p) >= 2)
            pieces.update(p for p in re.split(r"[^A-Za-z0-9]+", secret) if len(p) >= 3)
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, "***")
    return text


def _all_hosts(data: dict) -> List[str]:
    seen, out = set(), []
    for name in _members(data, "all", set()):
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def _members(data: dict, group: str, visiting: set) -> List[str]:
    if group in visiting:
        return []
    visiting.add(group)
    entry = data.get(group) if isinstance(data.get(group), dict) else {}
    out = [str(h) for h in entry.get("hosts") or [] if isinstance(h, (str, int))]
    for child in entry.get("children") or []:
        if isinstance(child, str):
            out.extend(_members(data, child, visiting))
    return out


def _group_hosts(data: dict, limit: str) -> List[str]:
    """Hosts of the groups (or hosts) named in `limit` (comma or colon separated)."""
    wanted = [p.strip() for p in re.split(r"[,:]", limit) if p.strip()]
    all_hosts = set(_all_hosts(data))
    out, missing = [], []
    for pattern in wanted:
        if pattern in data and pattern != "_meta":
            members = _members(data, pattern, set())
        elif pattern in all_hosts:
            members = [pattern]
        else:
            missing.append(pattern)
            continue
        out.extend(m for m in members if m not in out)
    if missing:
        groups = sorted(k for k in data if k != "_meta")
        raise UserInputError(f"No group or host named {', '.join(missing)} in the inventory.",
                             f"Groups: {', '.join(groups)}.", "limit")
    return out
