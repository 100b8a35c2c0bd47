"""Scenarios for people coming from the azure-iot extension (`az iot dps enrollment ...`), in
azure-cli's ScenarioTest style, live against the dev kit's DPS emulator: their scripts' options,
configured defaults that never break a command, --top, and each failure with its own exit code
and a recommendation that matches its cause."""
import json
import os

import pytest

from azext_edgetpm.tests.latest.scenario import ScenarioTest
from azext_edgetpm.tests.latest.test_dps_support import (  # noqa: F401  pylint: disable=unused-import
    arm_login, dps, rsa_ek)

HUB = "hub-devkit-1.azure-devices.devkit.local"   # the emulator's first hub, in the dev kit's IoT Hub domain


class AzureIotScenarioTest(ScenarioTest):

    @pytest.fixture(autouse=True)
    def _dps(self, dps, tmp_path):  # noqa: F811  pylint: disable=redefined-outer-name
        self.dps = dps
        self.tmp_path = tmp_path

    def setUp(self):
        super().setUp()
        self.kwargs.update({"cs": "@" + self.dps.cs_file, "read_cs": "@" + self.dps.read_cs_file, "hub": HUB})

    def test_an_az_iot_dps_enrollment_create_script_runs_unchanged(self):
        self.kwargs.update({"eid": "iot-script-1", "ek": rsa_ek(901), "tags": '{"site": "plant-1"}',
                            "props": '{"logLevel": "info"}'})
        self.cmd("az edge-tpm enrollment create --attestation-type tpm --eid {eid} --ek {ek} --ee --ih {hub} "
                 "--ap static --tags '{tags}' --props '{props}' --ps enabled --rp reprovisionandmigratedata "
                 "--login {cs}",
                 checks=[self.check("result", "created"), self.check("registrationId", "{eid}"),
                         self.check("attestation.type", "tpm"), self.check("attestation.tpm.endorsementKey", "{ek}"),
                         self.check("capabilities.iotEdge", True), self.check("iotHubs", [HUB]),
                         self.check("allocationPolicy", "static"), self.check("provisioningStatus", "enabled"),
                         self.check("initialTwin.tags", {"site": "plant-1"}),
                         self.check("initialTwin.properties.desired", {"logLevel": "info"}),
                         self.check("reprovisionPolicy.migrateDeviceData", True)])
        self.cmd("az edge-tpm enrollment show --eid {eid} --login {cs}",
                 checks=[self.check("registrationId", "{eid}"), self.check("capabilities.iotEdge", True)])
        # --ee false, as azure-iot's three-state flag
        self.cmd("az edge-tpm enrollment create --attestation-type tpm --eid {eid} --ek {ek} --ee false --login {cs}",
                 checks=[self.check("result", "updated"), self.check("capabilities.iotEdge", False)])

    def test_other_attestation_types_are_refused(self):
        for kind in ("x509", "symmetrickey"):
            self.kwargs["kind"] = kind
            out = self.cmd("az edge-tpm enrollment create --attestation-type {kind} --eid iot-x --ek " + rsa_ek(902)
                           + " --login {cs}", expect_failure=True)
            assert out.exit_code == 1 and "enrolls TPM devices only" in str(out.error)
            assert "az iot dps enrollment create" in " ".join(out.error.recommendations)

    def test_top(self):
        for seed in (911, 912, 913):
            self.kwargs.update({"eid": f"top-{seed}", "ek": rsa_ek(seed)})
            self.cmd("az edge-tpm enrollment create --eid {eid} --ek {ek} --login {cs}")
        listed = self.cmd("az edge-tpm enrollment list --top -1 --login {cs}").get_output_in_json()
        assert len(listed) >= 3
        assert len(self.cmd("az edge-tpm enrollment list --top 2 --login {cs}").get_output_in_json()) == 2
        for top in ("0", "-2"):
            self.kwargs["top"] = top
            out = self.cmd("az edge-tpm enrollment list --top={top} --login {cs}", expect_failure=True)
            assert "at least 1 (or -1 for all)" in str(out.error)

    def test_configured_group_does_not_break_install_with_an_id_scope(self):
        self.cmd("az configure --defaults group=my-rg")
        try:
            out = self.cmd("az edge-tpm install --host root@127.0.0.1:1 --id-scope 0ne00ABCDEF", expect_failure=True)
            # It went past the arguments to the device (a closed port here).
            assert "refused the connection" in str(out.error), out.error
            typed = self.cmd("az edge-tpm install --host root@127.0.0.1:1 --id-scope 0ne00ABCDEF -g other-rg",
                             expect_failure=True)
            assert "only goes with --dps-name" in str(typed.error)
        finally:
            self.cmd("az configure --defaults group=")

    def test_configured_dps_gives_way_to_a_typed_login_and_id_scope(self):
        env = {"AZURE_DEFAULTS_EDGE-TPM-DPS": "some-other-dps"}
        self.cmd("az edge-tpm enrollment list --top 1 --login {cs}", env=env)
        out = self.cmd("az edge-tpm install --host root@127.0.0.1:1 --id-scope 0ne00ABCDEF", env=env,
                       expect_failure=True)
        assert "refused the connection" in str(out.error), out.error

    def test_install_refuses_login_without_echoing_it(self):
        key = "c2VjcmV0LWtleS1ub3Qtc2hvd24="
        out = self.cmd("az edge-tpm install --host root@127.0.0.1:1 --id-scope 0ne00ABCDEF --login "
                       f"HostName=x.azure-devices-provisioning.net;SharedAccessKeyName=a;SharedAccessKey={key}",
                       expect_failure=True)
        assert "install does not take --login" in str(out.error)
        assert key not in str(out.error) + out.result.stderr + " ".join(out.error.recommendations)
        out = self.cmd("az edge-tpm install --host root@127.0.0.1:1 --id-scope 0ne00ABCDEF --auth-type login",
                       expect_failure=True)
        assert out.exit_code == 2  # az's own "unrecognized arguments" (--auth-type has no use in install)

    def test_exit_codes_and_recommendations_match_their_causes(self):
        # A missing Azure resource (the enrollment): exit code 3.
        missing = self.cmd("az edge-tpm enrollment show --eid no-such-enrollment --login {cs}", expect_failure=True)
        assert missing.exit_code == 3
        # DPS's 401 for a policy without the write right: the right, not the connection string.
        self.kwargs.update({"eid": "rights-1", "ek": rsa_ek(921)})
        denied = self.cmd("az edge-tpm enrollment create --eid {eid} --ek {ek} --login {read_cs}", expect_failure=True)
        advice = " ".join(denied.error.recommendations)
        assert denied.exit_code == 1 and "401" in str(denied.error)
        assert "lacks the right" in advice and "EnrollmentWrite" in advice and "copy" not in advice
        # A key that is wrong: that one says to copy the connection string again.
        wrong = self.tmp_path / "wrong-key.txt"
        wrong.write_text(self.dps.section["connection_string"].split("SharedAccessKey=")[0]
                         + "SharedAccessKey=" + "d3Jvbmcta2V5LXdyb25nLWtleQ==")
        os.chmod(wrong, 0o600)
        self.kwargs["wrong"] = "@" + str(wrong)
        bad = self.cmd("az edge-tpm enrollment list --login {wrong}", expect_failure=True)
        assert bad.exit_code == 1 and "copy the connection string again" in " ".join(bad.error.recommendations)


class ConfiguredDpsScenarioTest(ScenarioTest):
    """The DPS named once with `az configure --defaults`, found through ARM with the az login identity;
    and the azure-iot extension's configured --auth-type default."""

    @pytest.fixture(autouse=True)
    def _login(self, dps, arm_login):  # noqa: F811  pylint: disable=redefined-outer-name,unused-argument
        self.dps = dps

    def test_dps_name_and_auth_type_from_configured_defaults(self):
        section = self.dps.section
        env = {"AZURE_DEFAULTS_EDGE-TPM-DPS": section["dps_name"], "AZURE_DEFAULTS_GROUP": section["resource_group"]}
        self.kwargs.update({"eid": "configured-1", "ek": rsa_ek(931)})
        self.cmd("az edge-tpm enrollment create --eid {eid} --ek {ek}", env=env,
                 checks=[self.check("registrationId", "{eid}")])
        # azure-iot's `az configure --defaults iotdps-data-auth-type=login`: the host name alone is enough then,
        # as a DNS name in the cloud's DPS domain (the emulator's address is refused before any request).
        self.kwargs["host"] = section["connection_string"].split(";")[0].split("=", 1)[1]
        bearer = self.cmd("az edge-tpm enrollment show --eid {eid} --login {host}",
                          env={"AZURE_DEFAULTS_IOTDPS-DATA-AUTH-TYPE": "login"}, expect_failure=True)
        assert "not a DNS name alone" in str(bearer.error)
        without = self.cmd("az edge-tpm enrollment show --eid {eid} --login {host}", expect_failure=True)
        assert "no SharedAccessKey" in str(without.error)


class CommandCoverageScenarioTest(ScenarioTest):
    """The remaining commands in azdev's view (`self.cmd('az edge-tpm ...')`), each on a path
    that needs no IoT Edge install: deletes, registration states, device-side failures (exit code
    1, never 3, with the way out for that cause), and the lifecycle commands' plans."""

    @pytest.fixture(autouse=True)
    def _env(self, dps, rig):  # noqa: F811  pylint: disable=redefined-outer-name
        self.dps, self.rig = dps, rig

    def setUp(self):
        super().setUp()
        self.kwargs.update({"cs": "@" + self.dps.cs_file})

    def ssh(self, variant):
        dev = self.rig.by_variant(variant)
        self.kwargs.update({"host": f"root@{dev.host}:{dev.port}", "key": dev.key(), "kh": dev.known_hosts})
        return "--host {host} --ssh-key {key} --known-hosts {kh}"

    def test_enrollment_delete_and_registration_states(self):
        self.kwargs.update({"eid": "cover-1", "ek": rsa_ek(941)})
        self.cmd("az edge-tpm enrollment create --eid {eid} --ek {ek} --login {cs}")
        shown = self.cmd("az edge-tpm registration show --registration-id {eid} --login {cs}", expect_failure=True)
        assert shown.exit_code == 3 and "not tried to register" in str(shown.error)
        waited = self.cmd("az edge-tpm registration wait --registration-id {eid} --timeout 1 --interval 1 --login {cs}",
                          expect_failure=True)
        assert waited.exit_code == 1 and "not assigned within" in str(waited.error)
        self.cmd("az edge-tpm enrollment delete --eid {eid} --login {cs} --yes")
        gone = self.cmd("az edge-tpm enrollment show --eid {eid} --login {cs}", expect_failure=True)
        assert gone.exit_code == 3

    def test_device_side_problems_exit_1_with_their_own_way_out(self):
        notools = self.cmd("az edge-tpm ek show " + self.ssh("notools"), expect_failure=True)
        assert notools.exit_code == 1 and "tpm2-tools is not installed" in str(notools.error)
        assert "--install-tools" in " ".join(notools.error.recommendations)
        notpm = self.cmd("az edge-tpm ek show " + self.ssh("notpm"), expect_failure=True)
        assert notpm.exit_code == 1 and "No TPM answered" in str(notpm.error)
        assert "--tcti" in " ".join(notpm.error.recommendations)
        runtime = self.cmd("az edge-tpm status " + self.ssh("fresh"), expect_failure=True)
        assert runtime.exit_code == 1 and "IoT Edge is not installed" in str(runtime.error)
        assert "az edge-tpm install" in " ".join(runtime.error.recommendations)
        upgrade = self.cmd("az edge-tpm upgrade --dry-run " + self.ssh("fresh"), expect_failure=True)
        assert upgrade.exit_code == 1 and "nothing to upgrade" in str(upgrade.error)
        assert "az edge-tpm provision" in " ".join(upgrade.error.recommendations)

    def test_lifecycle_plans(self):
        self.kwargs.update({"eid": "cover-2", "ek": rsa_ek(942)})
        self.cmd("az edge-tpm enrollment create --eid {eid} --ek {ek} --login {cs}")
        plans = [
            self.cmd("az edge-tpm deprovision --keep-device --host root@127.0.0.1:1 --registration-id {eid} "
                     "--login {cs} --dry-run --yes", expect_failure=None),
            self.cmd("az edge-tpm reprovision --host root@127.0.0.1:1 --registration-id {eid} --login {cs} "
                     "--dry-run --yes", expect_failure=None),
            self.cmd("az edge-tpm rekey --host root@127.0.0.1:1 --registration-id {eid} --login {cs} --dry-run --yes",
                     expect_failure=None)]
        for out in plans:
            # a plan, or for rekey (which reads the new EK from the device) the unreachable device
            assert out.exit_code in (0, 1) and "Traceback" not in out.result.stderr, out.result.stderr
        self.cmd("az edge-tpm enrollment show --eid {eid} --login {cs}",
                 checks=[self.check("provisioningStatus", "enabled")])  # a plan changed nothing


class ReportMergeScenarioTest(ScenarioTest):
    """`az edge-tpm report merge` over reports as fleet runs write them (fleet/report.py, rows as
    the runner makes them; the pipeline test merges the reports of a real run): counts summed, a
    shard's rerun replaces its earlier rows, one clock; each wrong input one error naming it."""

    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path):
        self.tmp_path = tmp_path

    def write(self, file_name, command, started, hosts, failed=(), ok="assigned"):
        from azext_edgetpm.fleet import report
        from azext_edgetpm.fleet.observe import Row
        rows = [Row(h, f"dev-{h}", None, "failed" if h in failed else ok, h in failed,
                    "identify" if h in failed else None, "No TPM </script> answered" if h in failed else None,
                    4.0, 1.0 + i, 5.0 + i, False) for i, h in enumerate(hosts)]
        counts = {"devices": len(hosts), ok: len(hosts) - len(failed), "failed": len(failed)}
        path = self.tmp_path / file_name
        report.write(str(path), command, rows, counts, started, ok_status=ok)
        return str(path)

    def test_report_merge(self):
        self.kwargs.update({"a": self.write("a.html", "provision", 1000.0, ["h1", "h2", "h3"], failed=("h3",)),
                            "b": self.write("b.html", "provision", 1100.0, ["h4", "h5"]),
                            "b2": self.write("b2.html", "provision", 1200.0, ["h5", "h3"]),
                            "out": str(self.tmp_path / "merged.html"), "md": str(self.tmp_path / "summary.md")})
        self.cmd("az edge-tpm report merge --input {a} {b} --report {out} --summary {md}",
                 checks=[self.check("devices", 5), self.check("assigned", 4), self.check("failed", 1),
                         self.check("summary", "{md}"),
                         self.check("inputs", [self.kwargs["a"], self.kwargs["b"]]), self.check("replaced", []),
                         self.check("started", "1970-01-01T00:16:40Z")])
        with open(self.kwargs["md"], encoding="utf-8") as handle:
            recap = handle.read()
        assert recap.startswith("## az edge-tpm provision (2 reports merged)\n")
        assert "**5 devices**: 4 assigned (0 done in an earlier run), 1 failed." in recap
        assert "| h3 (device dev-h3) | identify | No TPM </script> answered |" in recap
        # A rerun of a shard (started later) replaces the rows of its devices in the earlier runs.
        rerun = self.cmd("az edge-tpm report merge --input {b2} {a} {b} {a} --report {out}",
                         checks=[self.check("devices", 5), self.check("assigned", 5), self.check("failed", 0),
                                 self.check("length(inputs)", 3)]).get_output_in_json()
        assert sorted((r["device"], r["kept"], r["dropped"]) for r in rerun["replaced"]) == [
            ("h3", self.kwargs["b2"], self.kwargs["a"]), ("h5", self.kwargs["b2"], self.kwargs["b"])]
        with open(self.kwargs["out"], encoding="utf-8") as handle:
            page = handle.read()
        island = page.split('<script type="application/json" id="run">', 1)[1].split("</script>", 1)[0]
        data = json.loads(island)
        assert data["started"] == 1000.0 and len(data["merged"]) == 3 and page.count("<tr class=") == 5
        starts = {r["name"]: r["start"] for r in data["rows"]}
        assert starts == {"h1": 1.0, "h2": 2.0, "h3": 202.0, "h4": 101.0, "h5": 201.0}   # on the first run's clock
        # Each wrong input: one error naming the file, nothing written.
        plain = self.tmp_path / "page.html"
        plain.write_text("<html><body>not ours</body></html>")
        old = self.tmp_path / "old.html"
        old.write_text(page.replace(island, json.dumps({"command": "provision", "counts": {}})))
        self.kwargs.update({"plain": str(plain), "old": str(old), "up": self.write("up.html", "upgrade", 1300.0, ["h1"],
                                                                                  ok="upgraded"),
                            "new": str(self.tmp_path / "new.html")})
        for inputs, error, cause in (("{plain}", "FileOperationError", "{plain} is not a report of az edge-tpm"),
                                     ("{old}", "FileOperationError", "version before 0.3.0"),
                                     ("{a} {tmp}/missing.html", "FileOperationError", "does not exist"),
                                     ("{out}", "ArgumentUsageError", "{out} is itself a merged report"),
                                     ("{a} {up}", "ArgumentUsageError", "is a report of `upgrade`"),
                                     ("{a} {new}", "ArgumentUsageError", "--report: {new} is both an input and a file to write")):
            self.kwargs.update({"inputs": inputs.format(**self.kwargs, tmp=self.tmp_path)})
            out = self.cmd("az edge-tpm report merge --input {inputs} --report {new}", expect_failure=True)
            assert type(out.error).__name__ == error and cause.format(**self.kwargs) in str(out.error), out.error
            assert out.error.recommendations and "Traceback" not in out.result.stderr
        assert not os.path.exists(self.kwargs["new"])
