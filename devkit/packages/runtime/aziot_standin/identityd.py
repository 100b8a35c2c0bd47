"""aziot-identityd of the stand-in: provisioning at start-up and on the reprovision API.

Follows Azure/iot-identity-service release/1.5:

- identity/aziot-identityd/src/lib.rs ``main`` + ``reprovision_device``: at start-up
  "Provisioning starting. Reason: Startup", then ``provision_device(skip_if_backup_is_valid =
  true)``; a failure is fatal: "Failed to provision with IoT Hub, and no valid device backup
  was found: ..." and the process exits (aziotd/src/main.rs logs the error chain, exit 1; the
  unit's Restart=on-failure starts it again in 5 s, see systemd.py). The reprovision API
  (``iotedge system reprovision``, Reason: Api) clears the device and registers again
  (skip_if_backup_is_valid = false); its failure is returned to the caller and the service runs on.
- identity/aziot-identityd/src/identity.rs ``dps_provision``: a valid backup in
  /var/lib/aziot/identityd/device_info is used WHATEVER the configuration says now
  ("Provisioned with backup for DEVICE."): a changed ID scope, endpoint or registration ID takes
  effect only through the reprovision API. ``get_backup_provisioning_info``: an unparsable backup
  is logged ("Ignoring invalid device info backup: ...") and removed. ``reconcile_hub_identities``
  writes device_info (HubDeviceInfo TOML) after every provisioning.

Not imitated: reconciliation with IoT Hub (module identities) always succeeds, so its "Could not
reconcile Identities with current device data. Reprovisioning." path does not happen in the kit.
"""
import json
import os
import time
import urllib.parse

from . import common, store, systemd

UNIT = "aziot-identityd"


def _read_payload(uri):
    """The JSON payload sent to DPS (a file: URI on the device)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "file":
        raise ValueError("payload URI %s is not a file URI" % uri)
    with open(urllib.parse.unquote(parsed.path), "r", encoding="utf-8") as f:
        return json.load(f)


def _register(prov):
    """Register with DPS through the TPM; (device dict, None) or (None, [causes])."""
    if store.services()["aziot-tpmd"]["state"] != "active":
        return None, ["could not get TPM keys: aziot-tpmd is not running"]
    payload = None
    if prov.get("payload"):
        try:
            payload = _read_payload(prov["payload"]["uri"])
        except (OSError, ValueError) as err:
            return None, ["could not read payload: %s" % err]
    att = prov["attestation"]
    proxy = common.https_proxy(common.unit_environment(UNIT))
    if proxy:
        store.log(UNIT, "INFO", "Using proxy %s" % common.proxy_shown(proxy))
    tpmd = common.service_config("tpmd")
    answer, stderr = common.tpm_child({"op": "register", "tcti": tpmd.get("tcti", "device"),
                                       "endpoint": prov["global_endpoint"], "id_scope": prov["scope_id"],
                                       "registration_id": att["registration_id"], "payload": payload,
                                       "proxy": proxy, "auth_key_index": tpmd.get("auth_key_index", 0x100)})
    for line in stderr:
        store.raw("aziot-tpmd", line)
    state = answer.get("state") or {}
    if not answer["ok"]:
        return None, ["%s: %s" % (answer["type"], answer["error"])]
    if state.get("status") != "assigned":
        return None, ["DPS registration failed: status %s: %s %s" % (
            state.get("status"), state.get("errorCode", ""), state.get("errorMessage", ""))]
    store.write_json(store.STATE_DIR + "/registration.json",
                     {"registrationId": att["registration_id"], "time": time.time()}, 0o600)
    return {"hub": state.get("assignedHub"), "device_id": state.get("deviceId")}, None


def _backup():
    """get_backup_provisioning_info: the device in device_info, or None (an invalid file is
    logged and removed)."""
    device, error = store.read_device_info()
    if error:
        store.log(UNIT, "WARN", "Ignoring invalid device info backup: %s" % error)
        try:
            os.unlink(store.BACKUP_FILE)
        except OSError as err:
            store.log(UNIT, "WARN", "Failed to delete invalid device info backup: %s" % err)
    if device is None:
        return None
    return {"hub": device["hub_name"], "device_id": device["device_id"]}


def _provisioned(device, trigger):
    """What follows a successful provision_device: reconciliation writes device_info."""
    store.log(UNIT, "INFO", "Provisioning complete.")
    store.log(UNIT, "INFO", "Identity reconciliation started. Reason: %s" % trigger)
    if not device:
        store.log(UNIT, "INFO", "reconcilation skipped since device is not provisioned")
    else:
        store.write_device_info(device["hub"], device["device_id"])
    store.log(UNIT, "INFO", "Identity reconciliation complete.")
    store.set_service(UNIT, "active", device=device or None)


def _provision(prov, use_backup):
    """provision_device: (device, None) or (None, [error, causes...])."""
    if prov["source"] == "none":
        store.log(UNIT, "INFO", "Skipping provisioning with IoT Hub.")
        return {}, None
    if prov["source"] != "dps":
        device = {"hub": prov.get("iothub_hostname"), "device_id": prov.get("device_id")}
        store.log(UNIT, "INFO", "Updated device info for %s." % device["device_id"])
        return device, None
    if use_backup:
        device = _backup()
        if device is not None:
            store.log(UNIT, "INFO", "Provisioned with backup for %s." % device["device_id"])
            return device, None
    device, causes = _register(prov)
    if device is None:
        return None, ["DPS client error"] + causes
    store.log(UNIT, "INFO", "Successfully provisioned with DPS.")
    return device, None


def start():
    """The daemon's start-up; False when it exited (systemd restarts it)."""
    store.set_service(UNIT, "active", device=None)
    systemd.started(UNIT)
    store.log(UNIT, "INFO", "Starting service...")
    store.log(UNIT, "INFO", "Version - %s" % common.identity_version())
    cfg = common.service_config("identityd")
    prov = cfg.get("provisioning")
    if not prov:
        systemd.error_chain(UNIT, "could not read config", [
            "could not read config from /etc/aziot/identityd/config.toml",
            "missing field `provisioning`"])
        systemd.exited(UNIT)
        return False
    proxy = common.https_proxy(common.unit_environment(UNIT))
    if proxy and common.proxy_shown(proxy) is None:
        systemd.error_chain(UNIT, "service encountered an error", ["invalid proxy uri"])
        systemd.exited(UNIT)
        return False
    store.log(UNIT, "INFO", "Provisioning starting. Reason: Startup")
    device, errors = _provision(prov, use_backup=True)
    if device is None:
        store.log(UNIT, "ERR!", "Failed to provision with IoT Hub, and no valid device backup was "
                  "found: %s" % errors[0])
        systemd.error_chain(UNIT, "service encountered an error", errors)
        systemd.exited(UNIT)
        return False
    _provisioned(device, "Startup")
    store.log(UNIT, "INFO", "Starting server...")
    return True


def reprovision():
    """The reprovision API (Reason: Api): forget the device and its backup, register again.
    None on success, else the error text the API returns (the service keeps running, without a
    device, until it is restarted)."""
    prov = common.service_config("identityd").get("provisioning") or {}
    store.log(UNIT, "INFO", "Provisioning starting. Reason: Api")
    store.set_service(UNIT, "active", device=None)
    try:
        os.unlink(store.BACKUP_FILE)
    except FileNotFoundError:
        pass
    except OSError as err:
        store.log(UNIT, "WARN", "Failed to clear device state before reprovisioning: %s" % err)
    device, errors = _provision(prov, use_backup=False)
    if device is None:
        # identity/aziot-identityd/src/http/mod.rs to_http_error: each line of the error chain
        # logged at INFO as "!!! ...", the whole chain returned to the client (404 for DPS errors).
        message = "\ncaused by: ".join(errors)
        for line in message.splitlines():
            store.log(UNIT, "INFO", "!!! %s" % line)
        return message
    _provisioned(device, "Api")
    return None


def device():
    """The device identity the running service holds (what aziot-edged asks it for)."""
    entry = store.services()[UNIT]
    return entry.get("device") if entry.get("state") == "active" else None
