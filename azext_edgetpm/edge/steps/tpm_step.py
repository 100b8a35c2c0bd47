"""Step 6 `tpm-access`: aziottpm's access to /dev/tpm* (udev rule, tss group, or root); skipped
for a TPM reached over TCP."""
import shlex

from azext_edgetpm.errors import DeviceError, EdgeTpmError, option
from .. import apt
from ..plan import Check, Step
from .base import UDEV_RULE_PATH, UDEV_RULE, TPMD_OVERRIDE_PATH, TPMD_OVERRIDE


TCP_TCTIS = ("swtpm", "mssim", "tabrmd", "libtpms", "cmd")


class TpmAccessStep(Step):
    name = "tpm-access"
    title = "Giving IoT Edge (aziottpm) access to the TPM"

    def check(self, ctx):
        f, s = ctx.facts, ctx.settings
        tcti = (s.tcti or "device").split(":", 1)[0]
        if tcti in TCP_TCTIS:
            return Check(skip=f"aziot-tpmd reaches the TPM through the {tcti} TCTI, not a device node: "
                              "no access to grant")
        if not f.tpm_devices:
            return Check(skip="the device has no /dev/tpm0 or /dev/tpmrm0 (a TPM over TCP, e.g. a simulator, "
                              "needs --tcti): no access to grant")
        mode = s.tpm_access
        if "aziottpm" not in f.users:
            if ctx.dry_run:
                return Check(changes=[f"give aziottpm access to {', '.join(f.tpm_devices)} ({mode})"])
            raise DeviceError(f"The aziottpm user does not exist on {ctx.display}.",
                              "Reinstall aziot-identity-service on the device; it creates the user.")
        changes, data = [], {"mode": mode}
        if mode == "udev":
            rule = f.file(UDEV_RULE_PATH)
            if rule is None or rule.text != UDEV_RULE:
                changes.append(f"write {UDEV_RULE_PATH}")
                data["rule"] = True
            wrong = [d for d, st in f.tpm_devices.items() if not _owner_ok(st)]
            if wrong:
                changes.append(f"apply it with udevadm trigger ({', '.join(wrong)} not owned by aziottpm)")
                data["trigger"] = True
        elif mode == "tss-group":
            if "tss" not in f.groups:
                raise DeviceError(f"{ctx.display} has no tss group.",
                                  "Install tpm2-tools (its tpm-udev rules create the tss group), or use "
                                  f"{option('tpm_access')} udev.")
            if "tss" not in f.users["aziottpm"]:
                changes.append("add aziottpm to the tss group")
                data["group"] = True
        else:
            if not f.systemd:
                raise DeviceError(
                    f"{option('tpm_access')} root needs systemd, which {ctx.display} does not run.",
                    f"Use {option('tpm_access')} udev or {option('tpm_access')} tss-group on devices without systemd.")
            override = f.file(TPMD_OVERRIDE_PATH)
            if override is None or override.text != TPMD_OVERRIDE:
                changes.append(f"run aziot-tpmd as root ({TPMD_OVERRIDE_PATH})")
                data["override"] = True
        state = ", ".join(f"{d} {st['owner']}:{st['group']} {st['mode']:o}" for d, st in f.tpm_devices.items())
        return Check(changes=changes, detail=f"{mode}: {state}", data=data)

    def apply(self, ctx, check):
        done = []
        if check.data.get("rule"):
            ctx.session.install_file(UDEV_RULE.encode(), UDEV_RULE_PATH, 0o644)
            done.append(f"wrote {UDEV_RULE_PATH}")
        if check.data.get("rule") or check.data.get("trigger"):
            if ctx.facts.has("udevadm"):
                ctx.run("udevadm control --reload-rules; "
                        "udevadm trigger --action=change --subsystem-match=tpm --subsystem-match=tpmrm; "
                        "udevadm settle --timeout=10", timeout=60)
                done.append("udevadm trigger")
        if check.data.get("group"):
            result = ctx.run("usermod -aG tss aziottpm")
            if not result.ok:
                raise EdgeTpmError(f"usermod -aG tss aziottpm failed on {ctx.display}: "
                                   f"{apt.tail(result.stderr)}", "Add the user to the group on the device.")
            done.append("added aziottpm to tss")
        if check.data.get("override"):
            ctx.run(f"mkdir -p {shlex.quote(TPMD_OVERRIDE_PATH.rsplit('/', 1)[0])}")
            ctx.session.install_file(TPMD_OVERRIDE.encode(), TPMD_OVERRIDE_PATH, 0o644)
            ctx.run("systemctl daemon-reload")
            done.append(f"wrote {TPMD_OVERRIDE_PATH}; systemctl daemon-reload")
        return "; ".join(done)

    def verify(self, ctx, check):
        f = ctx.facts
        mode = check.data.get("mode")
        if mode == "udev":
            wrong = [f"{d} ({st['owner']}:{st['group']} {st['mode']:o})" for d, st in f.tpm_devices.items()
                     if not _owner_ok(st)]
            if wrong:
                raise EdgeTpmError(
                    f"The udev rule is in place on {ctx.display}, but {', '.join(wrong)} did not change owner.",
                    f"Reboot the device so that udev applies the rule, or use {option('tpm_access')} tss-group.")
        elif mode == "tss-group" and "tss" not in f.users.get("aziottpm", []):
            raise EdgeTpmError(f"aziottpm is not in the tss group on {ctx.display}.",
                               "Add it on the device: usermod -aG tss aziottpm.")


def _owner_ok(st: dict) -> bool:
    return st["owner"] == "aziottpm" and st["mode"] & 0o600 == 0o600
