"""Step 5 `config`: /etc/aziot/config.toml for DPS + TPM (tomlkit; backup; atomic, 0600), the
payload, the edgeAgent image of the installed line."""
import shlex
from typing import List, Optional

from azext_edgetpm.errors import DeviceError, EdgeTpmError, LocalFileError
from .. import configtoml, proxy as proxy_mod, support
from ..plan import Check, Step
from .base import PAYLOAD_DIR, PAYLOAD_PATH, backup


class ConfigStep(Step):
    name = "config"
    title = "Writing /etc/aziot/config.toml (DPS, TPM attestation)"

    def _registration_id(self, ctx) -> Optional[str]:
        try:
            return ctx.registration_id(create=not ctx.dry_run)
        except EdgeTpmError as exc:
            # Under --dry-run a device not ready to show its EK (no tpm2-tools, no EK: a DeviceError or an
            # unclassified failure) leaves the ID pending; other kinds (unreachable, auth, ...) fail the step.
            unready = isinstance(exc, DeviceError) or type(exc) is EdgeTpmError  # pylint: disable=C0123
            if ctx.dry_run and unready:
                ctx.extra["registration_id_pending"] = str(exc)
                return None
            raise

    def check(self, ctx):
        f, s = ctx.facts, ctx.settings
        rid = self._registration_id(ctx)
        changes, data = [], {}
        payload_uri = None
        if s.payload is not None:
            payload_uri = "file://" + PAYLOAD_PATH
            current = f.file(PAYLOAD_PATH)
            if current is None or current.data != s.payload:
                changes.append(f"upload the payload {s.payload_name or ''} to {PAYLOAD_PATH}".replace("  ", " "))
                data["payload"] = True
        existing = f.file(configtoml.CONFIG_PATH)
        template = f.file(configtoml.TEMPLATE_PATH)
        base = existing.text if existing else (template.text if template else "")
        proxy = s.proxy
        settings = configtoml.DpsTpmSettings(
            id_scope=s.id_scope, registration_id=rid or "<from the EK>",
            global_endpoint=s.global_endpoint, payload_uri=payload_uri,
            auto_reprovisioning_mode=s.auto_reprovisioning_mode, tcti=s.tcti, manage_proxy=True,
            agent_image=_agent_image(ctx),
            proxy_url=proxy.url if proxy else None, proxy_display=proxy.display if proxy else None,
            trust_bundle_uri=proxy_mod.TRUST_BUNDLE_URI if proxy and proxy.ca_pem else None)
        bundle = f.file(proxy_mod.TRUST_BUNDLE)
        want_bundle = proxy.ca_pem if proxy and proxy.ca_pem else None
        if want_bundle is not None and (bundle is None or bundle.data != want_bundle or bundle.mode != 0o644):
            changes.append(f"write the proxy's CA to {proxy_mod.TRUST_BUNDLE} (trust bundle of the modules)")
            data["bundle"] = want_bundle
        elif want_bundle is None and bundle is not None:
            changes.append(f"remove {proxy_mod.TRUST_BUNDLE}")
            data["bundle"] = None
        edit = configtoml.edit_config(base, settings)
        data["text"] = edit.text
        kept = configtoml.summarize(edit.text).get("agentImage")
        if settings.agent_image and kept != settings.agent_image:
            note = (f"config.toml keeps its own edgeAgent image {kept}; the installed runtime's line uses "
                    f"{settings.agent_image}.")
            if note not in ctx.notes:
                ctx.notes.append(note)
        moved = _provisioning_moved(existing.text if existing else None, edit.text)
        if moved:
            data["moved"] = moved
        if existing is None:
            origin = "the template" if template else ("the package's template" if ctx.dry_run else "scratch")
            changes.append(f"create {configtoml.CONFIG_PATH} from {origin}: " + ", ".join(
                c for c in edit.changes if not c.startswith("removed")))
        elif edit.changes:
            changes.append(f"edit {configtoml.CONFIG_PATH}: " + ", ".join(edit.changes))
        elif existing.mode != 0o600 or existing.owner != "root":
            changes.append(f"make {configtoml.CONFIG_PATH} root-owned, mode 0600 (was {existing.owner}, "
                           f"{existing.mode:o})")
            data["chmod"] = True
        if rid is None:
            changes.append("read registration_id from the TPM's endorsement key during the install ("
                           + ctx.extra.get("registration_id_pending", "not readable yet") + ")")
        if ctx.created_keys:
            changes.insert(0, f"created the TPM's {' and '.join(k.upper() for k in ctx.created_keys)} "
                              "(0x81010001, 0x81000001)")
        summary = configtoml.summarize(edit.text)
        detail = (f"{configtoml.CONFIG_PATH}: DPS {summary['idScope']} at {summary['globalEndpoint']}, "
                  f"registration ID {summary['registrationId']}, tcti {summary['tcti']}")
        return Check(changes=changes, detail=detail, data=data)

    def apply(self, ctx, check):
        done = []
        if ctx.created_keys:
            done.append(f"created the TPM's {' and '.join(k.upper() for k in ctx.created_keys)}")
        if check.data.get("payload"):
            group = "aziotid" if "aziotid" in ctx.facts.users else "root"
            ctx.run(f"install -d -m 0750 -o root -g {shlex.quote(group)} {shlex.quote(PAYLOAD_DIR)}")
            ctx.session.install_file(ctx.settings.payload, PAYLOAD_PATH, 0o640 if group != "root" else 0o600,
                                     "root", group)
            done.append(f"uploaded the payload to {PAYLOAD_PATH}")
        if "bundle" in check.data:
            if check.data["bundle"] is None:
                ctx.run(f"rm -f -- {shlex.quote(proxy_mod.TRUST_BUNDLE)}")
                done.append(f"removed {proxy_mod.TRUST_BUNDLE}")
            else:
                owner = "aziotcs" if "aziotcs" in ctx.facts.users else "root"
                ctx.run(f"mkdir -p -- {shlex.quote(proxy_mod.TRUST_BUNDLE.rsplit('/', 1)[0])}")
                ctx.session.install_file(check.data["bundle"], proxy_mod.TRUST_BUNDLE, 0o644, owner, owner)
                done.append(f"wrote {proxy_mod.TRUST_BUNDLE}")
        existing = ctx.facts.file(configtoml.CONFIG_PATH)
        text = check.data["text"].encode()
        if check.data.get("moved"):
            ctx.extra["provisioning_moved"] = check.data["moved"]
        if existing is None or existing.data != text or check.data.get("chmod"):
            if existing is not None:
                saved = backup(ctx, configtoml.CONFIG_PATH)
                ctx.extra["config_backup"] = saved
                done.append(f"backup {saved}")
            ctx.run(f"mkdir -p {shlex.quote('/etc/aziot')}")
            ctx.session.install_file(text, configtoml.CONFIG_PATH, 0o600, "root", "root")
            done.insert(0, f"wrote {configtoml.CONFIG_PATH} (0600)")
        return "; ".join(done)

    def verify(self, ctx, check):
        current = ctx.facts.file(configtoml.CONFIG_PATH)
        if current is None or current.text != check.data["text"] or current.mode != 0o600:
            raise LocalFileError(f"{configtoml.CONFIG_PATH} on {ctx.display} is not what was written.",
                                 "Check the file on the device and run the command again.")
        summary = configtoml.summarize(current.text)
        wanted = {"source": "dps", "attestation": "tpm", "idScope": ctx.settings.id_scope,
                  "registrationId": ctx.registration_id(), "globalEndpoint": ctx.settings.global_endpoint}
        wrong = {k: summary[k] for k, v in wanted.items() if summary[k] != v}
        if wrong or not isinstance(summary["authKeyIndex"], int):
            raise LocalFileError(f"{configtoml.CONFIG_PATH} on {ctx.display} reads back differently: {wrong}.",
                                 "Report this as a bug of az edge-tpm, with the file's content.")


def _agent_image(ctx) -> Optional[str]:
    """The edgeAgent image of the runtime line installed (under --dry-run before the install: the line
    to install); None for a line the support table does not know (the file's image is kept)."""
    installed = ctx.facts.installed("aziot-edge")
    name = support.line_of(installed) if installed else (ctx.platform.line.name if ctx.platform else None)
    line = support.by_name(name) if name else None
    return line.agent_image if line else None


# What the identity service registers with: a change to any of them on a provisioned device needs
# `iotedge system reprovision` (at start-up it uses its device_info backup whatever these say).
_PROVISIONING_KEYS = ("source", "globalEndpoint", "idScope", "attestation", "registrationId", "payloadUri", "tcti",
                      "authKeyIndex")


def _provisioning_moved(old_text: Optional[str], new_text: str) -> List[str]:
    """The provisioning.* / [tpm] settings a config change moves (none when there was no DPS before)."""
    if not old_text:
        return []
    try:
        old = configtoml.summarize(old_text)
    except ValueError:
        return []
    if not old.get("source"):
        return []
    new = configtoml.summarize(new_text)
    return [k for k in _PROVISIONING_KEYS if old.get(k) != new.get(k)]
