"""Writes DPS provisioning with TPM attestation into IoT Edge's /etc/aziot/config.toml with
tomlkit, so that comments, layout and every unrelated setting of the file survive.

Pure text in, text out. The traps of ../shared/docs/iotedge.md are avoided by construction:

- `auto_reprovisioning_mode` is a top-level key, placed before the first table. A copy left
  inside `[provisioning]` or `[provisioning.attestation]` (where the IoT Edge documentation's
  snippet puts it, and where the runtime silently ignores it) is moved to the top level.
- `[tpm] auth_key_index` is an integer (written as 0x00_01_00); a quoted string, as the
  shipped template has it, is converted.
- `payload` is `{ uri = "file:///..." }`; DPS with `parent_hostname` (nested mode) is refused,
  since `iotedge config apply` would refuse it.
- Settings of another provisioning source or attestation method (connection_string,
  symmetric_key, identity_cert, ...) are removed, so that the file says one thing.
"""
import copy
import functools
import re
import threading
from dataclasses import dataclass, field
from typing import List, Optional

from azext_edgetpm.echo import shown
from azext_edgetpm.errors import DeviceError, LocalFileError

CONFIG_PATH = "/etc/aziot/config.toml"
TEMPLATE_PATH = "/etc/aziot/config.toml.edge.template"
DEFAULT_GLOBAL_ENDPOINT = "https://global.azure-devices-provisioning.net"
REPROVISIONING_MODES = ("Dynamic", "AlwaysOnStartup", "OnErrorOnly")
DEFAULT_AUTH_KEY_INDEX = 0x00_01_00
DEFAULT_TCTI = "device"
MARKER = "DPS provisioning with TPM attestation (written by az edge-tpm install)"

# Keys that belong to other provisioning sources / attestation methods.
_OTHER_SOURCE_KEYS = ("connection_string", "iothub_hostname", "device_id", "authentication")
_OTHER_ATTESTATION_KEYS = ("symmetric_key", "identity_cert", "identity_pk", "identity_auto_renew")
_NESTED_KEYS = ("parent_hostname", "local_gateway_hostname")


@dataclass
class DpsTpmSettings:
    """What `az edge-tpm install` writes. None means: keep what the file has."""
    id_scope: str
    registration_id: str
    global_endpoint: str = DEFAULT_GLOBAL_ENDPOINT
    payload_uri: Optional[str] = None
    auto_reprovisioning_mode: Optional[str] = None
    tcti: Optional[str] = None
    # The HTTP proxy (manage_proxy: the [agent] table and trust_bundle_cert follow these two
    # values; a proxy or CA that is no longer given is removed again).
    manage_proxy: bool = False
    proxy_url: Optional[str] = field(default=None, repr=False)
    proxy_display: Optional[str] = None
    trust_bundle_uri: Optional[str] = None
    # The edgeAgent image of the installed runtime's line (support.Line.agent_image): [agent.config]
    # image is set to it unless the file names an image of its own (another registry or tag). None: kept.
    agent_image: Optional[str] = None


DEFAULT_AGENT_IMAGE = "mcr.microsoft.com/azureiotedge-agent:1.5"
IMAGE_MARK = "# the installed IoT Edge line's (az edge-tpm)"
# Microsoft's edgeAgent image of a runtime line (an upgrade moves it to the new line); any other image is the user's.
_LINE_IMAGE = re.compile(r"^mcr\.microsoft\.com/azureiotedge-agent:\d+\.\d+$")
UPSTREAM_PROTOCOL = "AmqpWs"


@dataclass
class ConfigEdit:
    """The new text and what differs from the old one (empty: nothing to write)."""
    text: str
    changes: List[str] = field(default_factory=list)


def parse_auth_key_index(value) -> Optional[int]:  # pylint: disable=too-many-return-statements
    """An integer auth_key_index from an int or a TOML-ish string such as "0x00_01_00"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "").lower()
        try:
            if re.fullmatch(r"0x[0-9a-f]+", text):
                return int(text, 16)
            if re.fullmatch(r"0o[0-7]+", text):
                return int(text, 8)
            if re.fullmatch(r"[0-9]+", text):
                return int(text)
        except ValueError:
            return None
    return None


def _hex_index(value: int):
    """A tomlkit integer shown the way the IoT Edge documentation writes it (0x00_01_00)."""
    from tomlkit.items import Integer, Trivia
    digits = f"{value:06x}" if value <= 0xFF_FF_FF else f"{value:x}"
    raw = "0x" + "_".join(digits[i:i + 2] for i in range(0, len(digits), 2))
    return Integer(value, Trivia(), raw)


def _table_index(doc) -> Optional[int]:
    """Index in the document body where a new top-level key goes: before the first table and
    the comment lines that introduce it; None when the document has no table."""
    from tomlkit.items import AoT, Comment, Table
    body = doc.body
    for index, (key, item) in enumerate(body):
        if key is not None and isinstance(item, (Table, AoT)):
            start = index
            while start > 0 and body[start - 1][0] is None and isinstance(body[start - 1][1], Comment):
                start -= 1
            return start
    return None


def _set_top_level(doc, key: str, value) -> None:
    """Set a top-level key; a new key goes before the first table (never inside one)."""
    import tomlkit
    if key in doc:
        doc[key] = value
        return
    index = _table_index(doc)
    if index is None:
        doc[key] = value
        return
    item = tomlkit.item(value)
    item.trivia.trail = "\n\n"  # a blank line between the key and the table that follows
    try:
        doc._insert_at(index, key, item)  # pylint: disable=protected-access
    except (AttributeError, TypeError):  # tomlkit without _insert_at: its own placement is still top level
        doc[key] = value


def _set(table, key: str, value, changes: List[str], label: str) -> None:
    current = table.get(key) if key in table else None
    current = current.unwrap() if hasattr(current, "unwrap") else current
    plain = value.unwrap() if hasattr(value, "unwrap") else value
    if key in table and current == plain and type(current) is type(plain):
        return
    table[key] = value
    changes.append(f"{label} = {plain!r}" if key not in ("registration_id",) else f"{label} = {plain}")


def _drop(table, keys, changes: List[str], prefix: str) -> None:
    for key in keys:
        if key in table:
            del table[key]
            changes.append(f"removed {prefix}{key}")


_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _parsed_once(text: str):
    import tomlkit
    return tomlkit.parse(text)


def _parsed(text: str):
    with _PARSE_LOCK:   # (a fleet's devices reach this together: one parses, the others wait for it)
        return _parsed_once(text)


def _parse(text: str, where: str):
    """A document of `text` to edit: a copy of the one parsed earlier from the same text (a fleet
    edits the same template on every device; copying costs a quarter of parsing)."""
    from tomlkit.exceptions import TOMLKitError
    try:
        return copy.deepcopy(_parsed(text))
    except TOMLKitError as exc:
        raise LocalFileError(
            f"{where} is not valid TOML: {exc}",
            f"Fix the file on the device (or move it away to start again from the template, "
            f"{TEMPLATE_PATH}), then run the command again.") from exc


def edit_config(base_text: str, settings: DpsTpmSettings,  # pylint: disable=too-many-statements
                where: str = CONFIG_PATH) -> ConfigEdit:
    """Apply `settings` to a config.toml (or to the template's text for a new file)."""
    import tomlkit
    doc = _parse(base_text, where)
    changes: List[str] = []

    nested = [k for k in _NESTED_KEYS if k in doc]
    if nested:
        raise DeviceError(
            f"{where} sets {nested[0]} = {shown(doc[nested[0]])}: this is a nested (child) IoT Edge device, and "
            "DPS provisioning is not supported in nested mode; iotedge config apply would refuse the file.",
            f"Remove {nested[0]} from {where} on the device if it is not a child device, or provision "
            "child devices manually instead of through DPS.")
    for key in ("provisioning", "tpm"):
        if key in doc and not isinstance(doc[key], dict):
            raise LocalFileError(f"{where}: `{key}` is not a table.",
                                 f"Fix or remove `{key}` in {where} on the device, then run again.")

    # Misplaced auto_reprovisioning_mode (inside a table): remembered, removed.
    misplaced = None
    prov = doc.get("provisioning")
    for table, label in ((prov, "provisioning."),
                         (prov.get("attestation") if prov is not None else None, "provisioning.attestation.")):
        if table is not None and isinstance(table, dict) and "auto_reprovisioning_mode" in table:
            misplaced = misplaced or str(table["auto_reprovisioning_mode"])
            del table["auto_reprovisioning_mode"]
            changes.append(f"removed {label}auto_reprovisioning_mode (ignored there by the runtime)")

    if prov is None and _table_index(doc) is None:
        # A new file from the template (comments only): our block goes at its end, marked.
        doc.add(tomlkit.nl())
        doc.add(tomlkit.comment(MARKER))
    mode = settings.auto_reprovisioning_mode
    if mode is None and misplaced in REPROVISIONING_MODES and "auto_reprovisioning_mode" not in doc:
        mode = misplaced
    if mode is not None:
        _set_top_level_changed(doc, mode, changes)

    if prov is None:
        if _table_index(doc) is not None:
            doc.add(tomlkit.nl())
            doc.add(tomlkit.comment(MARKER))
        prov = tomlkit.table()
        doc.add("provisioning", prov)
    _set(prov, "source", "dps", changes, "provisioning.source")
    _drop(prov, _OTHER_SOURCE_KEYS, changes, "provisioning.")
    _set(prov, "global_endpoint", settings.global_endpoint, changes, "provisioning.global_endpoint")
    _set(prov, "id_scope", settings.id_scope, changes, "provisioning.id_scope")
    if settings.payload_uri:
        current = prov.get("payload")
        current_uri = current.get("uri") if isinstance(current, dict) else None
        if current_uri != settings.payload_uri or len(current) != 1:
            payload = tomlkit.inline_table()
            payload["uri"] = settings.payload_uri
            prov["payload"] = payload
            changes.append(f"provisioning.payload = {{ uri = {settings.payload_uri!r} }}")

    att = prov.get("attestation")
    if att is None or not isinstance(att, dict):
        att = tomlkit.table()
        prov["attestation"] = att
    _set(att, "method", "tpm", changes, "provisioning.attestation.method")
    _set(att, "registration_id", settings.registration_id, changes, "provisioning.attestation.registration_id")
    _drop(att, _OTHER_ATTESTATION_KEYS, changes, "provisioning.attestation.")

    tpm = doc.get("tpm")
    if tpm is None:
        tpm = tomlkit.table()
        doc.add("tpm", tpm)
    tcti = settings.tcti or (str(tpm["tcti"]) if "tcti" in tpm else DEFAULT_TCTI)
    _set(tpm, "tcti", tcti, changes, "tpm.tcti")
    current_index = tpm.get("auth_key_index") if "auth_key_index" in tpm else None
    current_index = current_index.unwrap() if hasattr(current_index, "unwrap") else current_index
    index = parse_auth_key_index(current_index) if current_index is not None else DEFAULT_AUTH_KEY_INDEX
    if index is None:
        raise LocalFileError(
            f"{where}: [tpm] auth_key_index = {shown(current_index)} is not a number.",
            "Set it to an integer such as 0x00_01_00 (the default), or remove it, then run again.")
    if not isinstance(current_index, int) or isinstance(current_index, bool):
        tpm["auth_key_index"] = _hex_index(index)
        written = _hex_index(index).as_string()
        changes.append(f"tpm.auth_key_index = {written} (integer)" if current_index is None else
                       f"tpm.auth_key_index: string {current_index!r} -> integer {written}")

    if settings.manage_proxy or settings.agent_image:
        _edit_agent(doc, settings, changes)
        _edit_trust_bundle(doc, settings.trust_bundle_uri, changes)

    text = tomlkit.dumps(doc)
    if not text.endswith("\n"):
        text += "\n"
    return ConfigEdit(text=text, changes=changes)


def _edit_agent(doc, settings: DpsTpmSettings, changes: List[str]) -> None:
    """With a proxy: the whole [agent] table (name, type, [agent.config] image: a table holding
    only [agent.env] lacks required keys), [agent.env] https_proxy and UpstreamProtocol = AmqpWs
    (edgeHub reaches the hub over WebSockets only through a proxy). Without: those two removed."""
    import tomlkit
    agent = doc.get("agent")
    if agent is not None and not isinstance(agent, dict):
        raise LocalFileError("/etc/aziot/config.toml: `agent` is not a table.",
                             "Fix or remove `agent` in the file on the device, then run again.")
    if settings.agent_image:
        agent = set_agent_image(doc, settings.agent_image, changes)
    if not settings.manage_proxy:
        return
    if not settings.proxy_url:
        env = agent.get("env") if agent is not None else None
        if isinstance(env, dict) and "https_proxy" in env:
            del env["https_proxy"]
            changes.append("removed agent.env.https_proxy")
            if env.get("UpstreamProtocol") == UPSTREAM_PROTOCOL:
                del env["UpstreamProtocol"]
                changes.append("removed agent.env.UpstreamProtocol")
            if not env:
                del agent["env"]
        return
    agent, config = _agent_tables(doc, agent, changes)
    if "image" not in config:
        config["image"] = settings.agent_image or DEFAULT_AGENT_IMAGE
        changes.append(f"agent.config.image = {config['image']!r}")
    env = agent.get("env")
    if not isinstance(env, dict):
        env = tomlkit.table()
        agent["env"] = env
    if env.get("https_proxy") != settings.proxy_url:
        env["https_proxy"] = settings.proxy_url
        changes.append(f"agent.env.https_proxy = {settings.proxy_display!r}")
    if env.get("UpstreamProtocol") != UPSTREAM_PROTOCOL:
        env["UpstreamProtocol"] = UPSTREAM_PROTOCOL
        changes.append(f"agent.env.UpstreamProtocol = {UPSTREAM_PROTOCOL!r}")


def _agent_tables(doc, agent, changes: List[str]):
    """[agent] with the keys the runtime requires (name, type) and its [agent.config] table, each made
    when missing; returns both."""
    import tomlkit
    if agent is None:
        agent = tomlkit.table(is_super_table=False)
        doc.add(tomlkit.nl())
        doc.add("agent", agent)
    for key, value in (("name", "edgeAgent"), ("type", "docker")):
        if key not in agent:
            agent[key] = value
            changes.append(f"agent.{key} = {value!r}")
    config = agent.get("config")
    if not isinstance(config, dict):
        config = tomlkit.table()
        agent["config"] = config
    return agent, config


def set_agent_image(doc, image: str, changes: List[str], upgrade: bool = False):
    """[agent] (name, type) and [agent.config] image = `image` (the runtime line's edgeAgent); returns
    the [agent] table. An image this command wrote (its line comment says so) follows the installed
    line; an image the user wrote is kept, except that an upgrade (Microsoft's update procedure) moves
    Microsoft's edgeAgent image of a line to the new one. Other keys and comments are kept (tomlkit)."""
    import tomlkit
    agent = doc.get("agent")
    if agent is not None and not isinstance(agent, dict):
        raise LocalFileError("/etc/aziot/config.toml: `agent` is not a table.",
                             "Fix or remove `agent` in the file on the device, then run again.")
    agent, config = _agent_tables(doc, agent, changes)
    current = config.get("image")
    trivia = getattr(current, "trivia", None)
    ours = IMAGE_MARK in ((trivia.comment if trivia is not None else "") or "")
    if current is None:
        item = tomlkit.string(image)
        item.comment(IMAGE_MARK)
        config["image"] = item
        changes.append(f"agent.config.image = {image!r}")
    elif str(current) != image and (ours or (upgrade and _LINE_IMAGE.match(str(current)))):
        config["image"] = image   # (tomlkit keeps the line's comment)
        changes.append(f"agent.config.image = {image!r} (was {str(current)!r})")
    return agent


def with_agent_image(text: str, image: str, where: str = CONFIG_PATH, upgrade: bool = True) -> ConfigEdit:
    """config.toml with [agent.config] image of a runtime line (set_agent_image); comments and every
    other setting kept. The text is returned unchanged when nothing differs."""
    import tomlkit
    doc = _parse(text, where)
    changes: List[str] = []
    set_agent_image(doc, image, changes, upgrade=upgrade)
    return ConfigEdit(tomlkit.dumps(doc) if changes else text, changes)


def _edit_trust_bundle(doc, uri: Optional[str], changes: List[str]) -> None:
    """trust_bundle_cert (top level) = the proxy CA's file; removed when it was ours and no CA is given."""
    from .proxy import TRUST_BUNDLE_URI
    current = doc.get("trust_bundle_cert")
    if uri:
        if current != uri:
            _set_top_level(doc, "trust_bundle_cert", uri)
            changes.append(f"trust_bundle_cert = {uri!r} (top level)")
    elif current == TRUST_BUNDLE_URI:
        del doc["trust_bundle_cert"]
        changes.append("removed trust_bundle_cert")


def _set_top_level_changed(doc, mode: str, changes: List[str]) -> None:
    if doc.get("auto_reprovisioning_mode") == mode:
        return
    _set_top_level(doc, "auto_reprovisioning_mode", mode)
    changes.append(f"auto_reprovisioning_mode = {mode!r} (top level)")


def summarize(text: str) -> dict:
    """What a config.toml says about provisioning (tomllib: what the runtime will read)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomlkit as tomllib  # type: ignore[no-redef]
    data = tomllib.loads(text)
    prov = data.get("provisioning") or {}
    att = prov.get("attestation") or {}
    tpm = data.get("tpm") or {}
    payload = prov.get("payload")
    return {
        "source": prov.get("source"),
        "globalEndpoint": prov.get("global_endpoint"),
        "idScope": prov.get("id_scope"),
        "attestation": att.get("method"),
        "registrationId": att.get("registration_id"),
        "payloadUri": payload.get("uri") if isinstance(payload, dict) else None,
        "autoReprovisioningMode": data.get("auto_reprovisioning_mode"),
        "tcti": tpm.get("tcti"),
        "authKeyIndex": tpm.get("auth_key_index"),
        "agentProxy": _agent_proxy(data),
        "agentImage": _agent_image(data),
    }


def unprovisioned(text: str, where: str = CONFIG_PATH) -> ConfigEdit:
    """config.toml without its provisioning: `[provisioning]` (and its sub-tables) and the
    top-level `auto_reprovisioning_mode` removed; comments and every other setting kept. The
    runtime cannot provision from it until `az edge-tpm install` (or a person) writes them again."""
    import tomlkit
    doc = _parse(text, where)
    changes: List[str] = []
    _drop(doc, ("provisioning", "auto_reprovisioning_mode"), changes, "")
    return ConfigEdit(tomlkit.dumps(doc) if changes else text, changes)


def agent_proxy_url(text: str) -> Optional[str]:
    """[agent.env] https_proxy of a config.toml (credentials included), or None."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomlkit as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(text)
    except Exception:  # pylint: disable=broad-except  # an unreadable file has no proxy to speak of
        return None
    env = (data.get("agent") or {}).get("env") or {}
    return env.get("https_proxy") or None


def _agent_image(data: dict) -> Optional[str]:
    """[agent.config] image as the device's file holds it (any other shape: none; the file is the device's)."""
    agent = data.get("agent")
    config = agent.get("config") if isinstance(agent, dict) else None
    image = config.get("image") if isinstance(config, dict) else None
    return image if isinstance(image, str) else None


def _agent_proxy(data: dict) -> Optional[str]:
    """The agent's proxy as output shows it: whatever the device's file holds, nothing up to its last @."""
    from .proxy import redact_value
    agent = data.get("agent")
    env = agent.get("env") if isinstance(agent, dict) else None
    value = env.get("https_proxy") if isinstance(env, dict) else None
    return redact_value(value) if value else None
