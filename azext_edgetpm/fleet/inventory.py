"""Reading a fleet inventory, validating all of it before anything starts, and sharding it.

Formats, chosen from the file name or given (--inventory-format): CSV (.csv, a header row),
JSON (.json) and YAML (.yml/.yaml): a list of devices, or {"defaults": {...}, "devices": [...]};
Ansible inventories (.ini, or a YAML file with Ansible's groups), read through ansible-inventory
with its static parsers only (fleet/ansible.py); a dynamic inventory script runs only when named
`ansible-script`. A name that says none of these is refused. An inventory is untrusted input:
read up to a bound (files.LIMITS), and every problem is one UserInputError naming the row.
"""
import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from azext_edgetpm.errors import UserInputError, option
from azext_edgetpm.echo import shown
from azext_edgetpm.files import LIMITS, read_bounded, read_text_bounded
from azext_edgetpm.limits import too_long

COLUMNS = ("host", "port", "user", "ssh_key", "registration_id", "device_id", "tags", "iot_hubs", "tcti",
           "edge_version", "sudo_password_env", "proxy", "no_proxy", "proxy_ca")
FORMATS = ("csv", "yaml", "json", "ansible", "ansible-script")
LENGTH_KIND = {"user": "ssh_user"}   # the column's limit is its option's (azext_edgetpm.limits)
TAGS_DEPTH = 10                      # IoT Hub's limit on the depth of a twin's JSON objects
TAGS_BYTES = 8 * 1024                # IoT Hub's limit on the size of a twin's tags
MAX_HUBS = 50

_HOST_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<name>[A-Za-z0-9_.\-]+))"
                      r"(?::(?P<port>\d{1,5}))?$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+~:\-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HUB_HOST = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")
_USER = re.compile(r"^[^\s\x00-\x1f\x7f@:]+$")


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


def detect_format(path: str, text: str) -> str:
    """The format from the file name (and, for YAML, whether it holds Ansible's groups)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".csv", ".json"):
        return ext[1:]
    if ext == ".ini":
        return "ansible"
    if ext in (".yml", ".yaml"):
        data = _yaml_load(text, path)
        # Ours: a list, or a mapping with "devices". Ansible's: groups ("all", ...) with hosts/children.
        if isinstance(data, dict) and "devices" not in data and any(
                isinstance(v, dict) and ({"hosts", "children", "vars"} & set(map(str, v))) for v in data.values()):
            return "ansible"
        return "yaml"
    executable = os.access(path, os.X_OK)
    raise UserInputError(
        f"Cannot tell the format of the inventory {path} from its name ({ext or 'no extension'})"
        + ("; it is executable, and an executable inventory is never run unless asked for." if executable else "."),
        f"Name it .csv, .json, .yml/.yaml or .ini, or give {option('inventory_format')} csv, json, yaml or ansible "
        f"(an Ansible INI or YAML inventory); a dynamic inventory script runs only with {option('inventory_format')} "
        "ansible-script.", "inventory")


def read_inventory(path: str, fmt: Optional[str] = None, limit: Optional[str] = None,
                   defaults: Optional[dict] = None) -> List[InventoryDevice]:
    """All devices of the inventory, validated; one UserInputError naming every bad row."""
    from azext_edgetpm.fleet import ansible
    path = os.path.expanduser(path)
    if fmt is not None and fmt not in FORMATS:
        raise UserInputError(f"Unknown inventory format {shown(fmt)}.", f"Formats: {', '.join(FORMATS)}.",
                             "inventory_format")
    file_defaults: dict = {}
    if fmt == "ansible-script":  # the one case where the file is run, not read
        rows = ansible.rows(path, limit, COLUMNS, script=True)
    else:
        text = read_text_bounded(path, LIMITS["inventory"], "The inventory", "inventory",
                                 "Give a CSV, YAML, JSON or Ansible inventory file.")
        fmt = fmt or detect_format(path, text)
        if limit and fmt != "ansible":
            raise UserInputError("A group limit only applies to Ansible inventories.",
                                 "Drop the limit, or give an Ansible inventory.", "limit")
        if fmt == "ansible":
            rows = ansible.rows(path, limit, COLUMNS, script=False, file_text=text)
        else:
            rows, file_defaults = _rows(path, fmt, text)
    merged_defaults = dict(defaults or {})
    merged_defaults.update({k: v for k, v in file_defaults.items() if v is not None})
    return validate(rows, merged_defaults, strict_columns=not fmt.startswith("ansible"),
                    base_dir=os.path.dirname(path))


def _yaml_load(text: str, path: str):
    import yaml  # (PyYAML comes with azure-cli)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The problem and where, never PyYAML's snippet of the line (it may hold a proxy password).
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "a syntax error"
        raise UserInputError(f"The inventory {path} is not valid YAML: {problem}{where}.", "Fix the file.",
                             "inventory") from None
    except RecursionError:
        raise UserInputError(f"The inventory {path} nests too deeply.", "Fix the file.", "inventory") from None


def _rows(path: str, fmt: str, text: str):
    """[(source, {column: value})], file defaults."""
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        try:
            return _csv_rows(path, reader)
        except csv.Error as exc:  # (its text names the problem, not the field's value)
            raise UserInputError(f"The inventory {path} is not valid CSV at line {reader.line_num}: {exc}.",
                                 "Fix the file (quote a field that holds commas, quotes or line breaks).",
                                 "inventory") from None
    return _document_rows(path, fmt, text)


def _csv_rows(path: str, reader):
    """[(source, {column: value})] of a CSV inventory (a header row), no defaults."""
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


def _document_rows(path: str, fmt: str, text: str):
    """[(source, {column: value})] and defaults of a JSON or YAML inventory."""
    if fmt == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:  # (its text says where, not what: no value of the file)
            raise UserInputError(f"The inventory {path} is not valid JSON: {exc}", "Fix the file.",
                                 "inventory") from None
        except RecursionError:
            raise UserInputError(f"The inventory {path} nests too deeply.", "Fix the file.", "inventory") from None
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
        raise UserInputError("Unknown keys in the inventory's defaults: "
                             f"{', '.join(sorted(map(shown, bad_defaults)))}.",
                             f"Known keys: {', '.join(COLUMNS[1:])}.", "inventory")
    return rows, defaults


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
    by_device_id: Dict[str, str] = {}
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
            # The hub's device ID: the device_id column, else the registration ID (when given).
            device_id = device.device_id or device.registration_id
            if device_id:
                if device_id in by_device_id:
                    issues.append(f"duplicate device_id {device_id} (also {by_device_id[device_id]})")
                else:
                    by_device_id[device_id] = source
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
        why = too_long(LENGTH_KIND.get(column, column), _text(values[column]))
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
    if user and not _USER.match(user):
        issues.append(f"user {shown(user)} is not a login name (no blanks, control characters, @ or :)")
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
    tags = _tags(values["tags"], issues)
    hubs = _hubs(values["iot_hubs"], issues)
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
                           device_id=device_id, tags=tags or None, iot_hubs=hubs or None,
                           tcti=tcti, edge_version=version, sudo_password_env=env_name, proxy=proxy)


def _tags(tags, issues) -> Optional[dict]:
    """The tags column: a JSON object (text in CSV) within IoT Hub's depth and size limits."""
    problem = None
    if isinstance(tags, str) and tags.strip():
        try:
            tags = json.loads(tags)
        except RecursionError:
            problem = f"tags nest deeper than {TAGS_DEPTH} levels (IoT Hub's limit)"
        except ValueError:
            problem = "tags is not a JSON object"
    if problem is None and tags not in (None, ""):
        problem = _tags_problem(tags)
    if problem:
        issues.append(problem)
        return None
    return tags or None


def _tags_problem(tags) -> Optional[str]:
    if not isinstance(tags, dict):
        return "tags is not a JSON object"
    depth, nodes = _shape(tags, TAGS_DEPTH + 1, TAGS_BYTES)
    if depth > TAGS_DEPTH:
        return f"tags nest deeper than {TAGS_DEPTH} levels (IoT Hub's limit)"
    if nodes > TAGS_BYTES:  # (each object or array is at least 2 bytes of JSON)
        return f"tags is larger than the {TAGS_BYTES:,} bytes IoT Hub takes"
    try:
        size = len(json.dumps(tags, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError):  # (YAML dates, sets and the like)
        return "tags holds values that are not JSON (dates? quote them)"
    if size > TAGS_BYTES:
        return f"tags is {size:,} bytes as JSON; IoT Hub takes at most {TAGS_BYTES:,}"
    return None


def _shape(value, stop: int, budget: int = 10000):
    """(depth, nodes) of JSON objects and arrays in `value`, walked without recursion and given
    up past `stop` levels or `budget` nodes (a YAML alias bomb shares its nodes: never expanded)."""
    deepest, nodes, stack = 0, 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        nodes += 1
        deepest = max(deepest, level)
        if deepest >= stop or nodes > budget:
            break
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest, nodes


def _hubs(hubs, issues) -> Optional[List[str]]:
    """The iot_hubs column: IoT hub host names (a DNS name: no scheme, port, path or user)."""
    if hubs is None or hubs == "":
        return None
    if isinstance(hubs, str):
        hubs = [h for h in re.split(r"[\s,;]+", hubs) if h]
    if not isinstance(hubs, list) or not all(isinstance(h, str) for h in hubs):
        issues.append("iot_hubs is not a list of host names")
        return None
    if len(hubs) > MAX_HUBS:
        issues.append(f"iot_hubs names {len(hubs):,} hubs; at most {MAX_HUBS} are accepted")
        return None
    bad = [h for h in hubs if not _HUB_HOST.match(h)]
    if bad:
        issues.append(f"iot_hubs {shown(bad[0])} is not an IoT hub host name (such as my-hub.azure-devices.net)")
        return None
    return hubs


def _proxy(values, base_dir, issues):
    """The row's HTTP proxy (proxy: URL or none, no_proxy, proxy_ca: a PEM file, relative to the
    inventory); its issues never show a password."""
    from azext_edgetpm.edge.proxy import parse
    ca_path, ca_pem = _text(values["proxy_ca"]), None
    if ca_path:
        ca_path = os.path.expanduser(ca_path)
        if not os.path.isabs(ca_path):
            ca_path = os.path.join(base_dir, ca_path)
        from azext_edgetpm.errors import LocalFileError
        try:
            ca_pem = read_bounded(ca_path, LIMITS["ca_bundle"], "proxy_ca", "proxy_ca")
        except LocalFileError as exc:
            issues.append(exc.message.rstrip("."))
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
