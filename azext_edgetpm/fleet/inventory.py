"""Reading a fleet inventory, validating all of it before anything starts, and sharding it.

Formats: CSV (a header row), YAML and JSON (a list of devices, or {"defaults": {...},
"devices": [...]}), and Ansible inventories (INI or YAML), read through `ansible-inventory
--list` (Ansible's own parser; we do not parse its formats ourselves).
"""
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from azext_edgetpm.errors import LocalFileError, MissingInputError, UserInputError
from azext_edgetpm.echo import shown
from azext_edgetpm.limits import too_long

COLUMNS = ("host", "port", "user", "ssh_key", "registration_id", "device_id", "tags", "iot_hubs", "tcti",
           "edge_version", "sudo_password_env", "proxy", "no_proxy", "proxy_ca")
FORMATS = ("csv", "yaml", "json", "ansible")
ANSIBLE_VARS = {"ansible_host": "host", "ansible_user": "user", "ansible_port": "port",
                "ansible_ssh_private_key_file": "ssh_key", "ansible_private_key_file": "ssh_key"}

_HOST_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<name>[A-Za-z0-9_.\-]+))"
                      r"(?::(?P<port>\d{1,5}))?$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+~:\-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class InventoryDevice:
    """One validated row."""
    source: str                         # "row 3" / "host gw-7"
    host: str                           # hostname or address (no user, no port)
    port: int = 22
    user: Optional[str] = None
    ssh_key: Optional[str] = None
    registration_id: Optional[str] = None
    device_id: Optional[str] = None
    tags: Optional[dict] = None
    iot_hubs: Optional[List[str]] = None
    tcti: Optional[str] = None
    edge_version: Optional[str] = None
    sudo_password_env: Optional[str] = None
    proxy: Optional[object] = field(default=None, repr=False)   # edge.proxy.Proxy (None: direct)
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """host:port, the device's identity in state files and shards."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host.lower()}:{self.port}"

    @property
    def ssh_host(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}:{self.port}"


def detect_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return "csv"
    if ext == ".json":
        return "json"
    if ext in (".yml", ".yaml"):
        try:
            with open(path, encoding="utf-8") as handle:
                data = _yaml_load(handle.read(), path)
        except UnicodeDecodeError:
            return "yaml"
        # Ours: a list, or a mapping with "devices". Ansible's: groups ("all", ...) with hosts/children.
        if isinstance(data, dict) and "devices" not in data and any(
                isinstance(v, dict) and ({"hosts", "children", "vars"} & set(v)) for v in data.values()):
            return "ansible"
        return "yaml"
    return "ansible"  # .ini, no extension: Ansible's INI inventory


def read_inventory(path: str, fmt: Optional[str] = None, limit: Optional[str] = None,
                   defaults: Optional[dict] = None) -> List[InventoryDevice]:
    """All devices of the inventory, validated; one UserInputError naming every bad row."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise LocalFileError(f"The inventory {path} does not exist.", "Give the path of a CSV, YAML, JSON or "
                             "Ansible inventory file.", "inventory")
    fmt = fmt or detect_format(path)
    if limit and fmt != "ansible":
        raise UserInputError("A group limit only applies to Ansible inventories.",
                             "Drop the limit, or give an Ansible inventory.", "limit")
    if fmt == "ansible":
        rows, file_defaults = _ansible_rows(path, limit), {}
    else:
        rows, file_defaults = _rows(path, fmt)
    merged_defaults = dict(defaults or {})
    merged_defaults.update({k: v for k, v in file_defaults.items() if v is not None})
    return validate(rows, merged_defaults, strict_columns=fmt != "ansible", base_dir=os.path.dirname(path))


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalFileError(f"Cannot read the inventory {path}: {exc}", "Give a readable UTF-8 file.",
                             "inventory") from exc


def _yaml_load(text: str, path: str):
    import yaml  # (PyYAML comes with azure-cli)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserInputError(f"The inventory {path} is not valid YAML: {exc}", "Fix the file.", "inventory") from exc


def _rows(path: str, fmt: str):
    """[(source, {column: value})], file defaults."""
    text = _read_text(path)
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise UserInputError(f"The inventory {path} has no header row.",
                                 "Start the CSV with a header such as host,user,ssh_key.", "inventory")
        rows = []
        for number, row in enumerate(reader, start=2):  # (line 1 is the header)
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            if None in row:
                row = dict(row)
                row["(unnamed column)"] = row.pop(None)
            rows.append((f"line {number}", {k.strip(): (v.strip() if isinstance(v, str) else v)
                                             for k, v in row.items() if k is not None}))
        unknown = [c.strip() for c in reader.fieldnames if c.strip() not in COLUMNS]
        if unknown:
            # (named once, on the header line, rather than on every row)
            rows.insert(0, ("line 1 (header)", {"(header)": unknown}))
        return rows, {}
    if fmt == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserInputError(f"The inventory {path} is not valid JSON: {exc}", "Fix the file.",
                                 "inventory") from exc
    else:
        data = _yaml_load(text, path)
    defaults = {}
    if isinstance(data, dict):
        unknown = set(data) - {"defaults", "devices"}
        if unknown or not isinstance(data.get("devices"), list):
            raise UserInputError(
                f"The inventory {path} must be a list of devices or a mapping with 'devices' (and optional "
                f"'defaults'); found {', '.join(sorted(map(str, data))) or 'nothing'}.",
                "See `az edge-tpm provision -h` for the inventory format.", "inventory")
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise UserInputError("The inventory's 'defaults' must be a mapping.", "Fix the file.", "inventory")
        data = data["devices"]
    if not isinstance(data, list):
        raise UserInputError(f"The inventory {path} holds no list of devices.",
                             "See `az edge-tpm provision -h` for the inventory format.", "inventory")
    rows = []
    for index, item in enumerate(data, start=1):
        if isinstance(item, str):
            item = {"host": item}
        rows.append((f"device {index}", item if isinstance(item, dict) else {"(not a mapping)": item}))
    bad_defaults = set(defaults) - set(COLUMNS) - {"host"}
    if bad_defaults:
        raise UserInputError(f"Unknown keys in the inventory's defaults: {', '.join(sorted(bad_defaults))}.",
                             f"Known keys: {', '.join(COLUMNS[1:])}.", "inventory")
    return rows, defaults


def _ansible_rows(path: str, limit: Optional[str]):
    import sys
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-inventory")  # (a virtualenv not on PATH)
    exe = shutil.which("ansible-inventory") or (beside if os.access(beside, os.X_OK) else None)
    if not exe:
        raise MissingInputError(
            f"{path} looks like an Ansible inventory, and ansible-inventory (Ansible) is not installed here.",
            "Install Ansible (pip install ansible-core) to read Ansible inventories, or give the devices as "
            "CSV, YAML or JSON.", "inventory")
    proc = subprocess.run([exe, "-i", path, "--list"], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise UserInputError(f"ansible-inventory could not read {path}: {proc.stderr.strip()[-500:]}",
                             "Fix the inventory (ansible-inventory -i FILE --list shows what Ansible makes of it).",
                             "inventory")
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise UserInputError(f"ansible-inventory gave no JSON for {path}.", "Check the Ansible installation.",
                             "inventory") from exc
    hostvars = (data.get("_meta") or {}).get("hostvars") or {}
    hosts = _group_hosts(data, limit) if limit else _all_hosts(data)
    rows = []
    for name in hosts:
        variables = hostvars.get(name) or {}
        row = {"host": name}
        for var, column in ANSIBLE_VARS.items():
            if variables.get(var) is not None:
                row[column] = variables[var]
        for column in COLUMNS[1:]:
            if column in variables and column not in row:
                row[column] = variables[column]
        rows.append((f"host {name}", row))
    return rows


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
    entry = data.get(group) or {}
    out = list(entry.get("hosts") or [])
    for child in entry.get("children") or []:
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


def _text(value) -> Optional[str]:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def validate(rows, defaults: dict, strict_columns: bool = True, base_dir: str = ".") -> List[InventoryDevice]:
    """InventoryDevices for all rows, or one UserInputError listing every problem by row."""
    problems: List[str] = []
    devices: List[InventoryDevice] = []
    by_key: Dict[str, str] = {}
    by_rid: Dict[str, str] = {}
    header_unknown = set()
    for source, row in rows:
        issues: List[str] = []
        if "(header)" in row:
            header_unknown = set(row["(header)"])
            problems.append(f"{source}: unknown column" + ("s " if len(header_unknown) > 1 else " ")
                            + ", ".join(shown(u) for u in row["(header)"]))
            continue
        label = source + (f" ({shown(row.get('host'), 40)})" if isinstance(row, dict) and row.get("host") else "")
        if strict_columns:
            unknown = [str(k) for k in row if k not in COLUMNS and k not in header_unknown]
            if unknown:
                issues.append("unknown column" + ("s " if len(unknown) > 1 else " ")
                              + ", ".join(shown(u) for u in unknown))
        values = {c: row.get(c) if row.get(c) not in (None, "") else defaults.get(c) for c in COLUMNS}
        # user@ and :port written in the host itself beat the defaults (not the row's own columns)
        values["user"] = _text(row.get("user")) or ("@" if "@" in str(row.get("host") or "") else None) \
            or defaults.get("user")
        values["port"] = _text(row.get("port")) or (None if _has_port(row.get("host")) else defaults.get("port"))
        device = _device(source, values, issues, base_dir)
        if device is not None:
            if device.key in by_key:
                issues.append(f"duplicate host {device.key} (also {by_key[device.key]})")
            else:
                by_key[device.key] = source
            if device.registration_id:
                if device.registration_id in by_rid:
                    issues.append(f"duplicate registration_id {device.registration_id} "
                                  f"(also {by_rid[device.registration_id]})")
                else:
                    by_rid[device.registration_id] = source
        if issues:
            problems.append(f"{label}: " + "; ".join(issues))
        elif device is not None:
            devices.append(device)
    if problems:
        bad_rows = len(problems) - (1 if header_unknown else 0)
        raise UserInputError(
            f"The inventory has {len(problems)} problem{'s' if len(problems) > 1 else ''} ({bad_rows} bad "
            f"row{'' if bad_rows == 1 else 's'}); nothing was started:\n  "
            + "\n  ".join(problems),
            "Fix the rows named above and run the command again. Columns: " + ", ".join(COLUMNS) + ".",
            "inventory")
    if not devices:
        raise UserInputError("The inventory holds no devices.", "Add at least one device.", "inventory")
    return devices


def _has_port(host) -> bool:
    match = _HOST_RE.match(str(host or "").strip())
    return bool(match and match.group("port"))


def _device(source, values, issues, base_dir) -> Optional[InventoryDevice]:  # pylint: disable=too-many-statements,too-many-branches
    host_text = _text(values["host"])
    if not host_text:
        issues.append("no host")
        return None
    for column in ("host", "user", "ssh_key", "registration_id", "device_id", "tcti", "edge_version",
                   "sudo_password_env", "proxy", "no_proxy", "proxy_ca"):
        why = too_long(column, _text(values[column]))
        if why:  # bounded like the options (azext_edgetpm.limits), before anything reaches a device
            issues.append(f"{column} {why}")
    if issues:
        return None
    match = _HOST_RE.match(host_text)
    if not match:
        issues.append(f"host {shown(host_text)} is not [user@]host[:port]")
        return None
    host = match.group("v6") or match.group("name")
    port = _text(values["port"]) or match.group("port") or "22"
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        issues.append(f"port {shown(port)} is not a TCP port")
        port = "22"
    user = match.group("user") if values["user"] == "@" else (_text(values["user"]) or match.group("user"))
    key = _text(values["ssh_key"])
    if key:
        key = os.path.expanduser(key)
        if not os.path.isabs(key):
            key = os.path.join(base_dir, key)
        if not os.path.isfile(key):
            issues.append(f"ssh_key {key} does not exist")
    from azext_edgetpm.dps.enrollment import normalize_registration_id, validate_device_id
    rid = _text(values["registration_id"])
    if rid:
        try:
            rid = normalize_registration_id(rid, "registration_id")
        except Exception as exc:  # pylint: disable=broad-except  # DPS's rules, as the single commands apply them
            issues.append(str(getattr(exc, "error_msg", exc)).rstrip("."))
    device_id = _text(values["device_id"])
    if device_id:
        try:
            device_id = validate_device_id(device_id, "device_id")
        except Exception as exc:  # pylint: disable=broad-except  # IoT Hub's rules
            issues.append(str(getattr(exc, "error_msg", exc)).rstrip("."))
    tags = values["tags"]
    if isinstance(tags, str) and tags.strip():
        try:
            tags = json.loads(tags)
        except ValueError:
            issues.append("tags is not a JSON object")
            tags = None
    if tags is not None and tags != "" and not isinstance(tags, dict):
        issues.append("tags is not a JSON object")
        tags = None
    hubs = values["iot_hubs"]
    if isinstance(hubs, str):
        hubs = [h for h in re.split(r"[\s,;]+", hubs) if h]
    elif hubs is not None and not isinstance(hubs, list):
        issues.append("iot_hubs is not a list of host names")
        hubs = None
    tcti = _text(values["tcti"])
    if tcti and re.search(r"[\x00-\x1f]", tcti):
        issues.append("tcti must be one line")
    version = _text(values["edge_version"])
    if version and not _VERSION.match(version):
        issues.append(f"edge_version {shown(version)} is not a package version")
    env_name = _text(values["sudo_password_env"])
    if env_name and not _ENV_NAME.match(env_name):
        issues.append(f"sudo_password_env {shown(env_name)} is not an environment variable name")
    proxy = _proxy(values, base_dir, issues)
    return InventoryDevice(source=source, host=host, port=int(port), user=user, ssh_key=key, registration_id=rid,
                           device_id=device_id, tags=tags or None, iot_hubs=[str(h) for h in hubs] if hubs else None,
                           tcti=tcti, edge_version=version, sudo_password_env=env_name, proxy=proxy)


def _proxy(values, base_dir, issues):
    """The row's HTTP proxy (proxy: URL or none, no_proxy, proxy_ca: a PEM file, relative to the
    inventory); its issues never show a password."""
    from azext_edgetpm.edge.proxy import parse
    ca_path, ca_pem = _text(values["proxy_ca"]), None
    if ca_path:
        ca_path = os.path.expanduser(ca_path)
        if not os.path.isabs(ca_path):
            ca_path = os.path.join(base_dir, ca_path)
        try:
            with open(ca_path, "rb") as handle:
                ca_pem = handle.read()
        except OSError as exc:
            issues.append(f"proxy_ca {ca_path}: {exc.strerror}")
            return None
    try:
        return parse(_text(values["proxy"]), _text(values["no_proxy"]), ca_pem)
    except Exception as exc:  # pylint: disable=broad-except  # the same rules as --proxy's
        issues.append(str(getattr(exc, "error_msg", exc)).rstrip(".").replace("--proxy-ca", "proxy_ca")
                      .replace("--no-proxy", "no_proxy").replace("--proxy", "proxy"))
        return None


def parse_shard(value: str):
    """'i/n' (1-based, as Azure Pipelines' System.JobPositionInPhase/TotalJobsInPhase) -> (i, n)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value or "")
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise UserInputError(f"Shard {shown(value)} is not i/n with 1 <= i <= n.",
                             "For example 2/4: the second of four parallel jobs.", "shard")
    return int(match.group(1)), int(match.group(2))


def shard_of(key: str, count: int) -> int:
    """The 1-based shard of a device key: a stable hash, independent of the row order."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count + 1


def select_shard(devices: List[InventoryDevice], index: int, count: int) -> List[InventoryDevice]:
    return [d for d in devices if shard_of(d.registration_id or d.key, count) == index]
