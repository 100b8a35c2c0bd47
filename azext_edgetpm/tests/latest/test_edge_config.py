"""The config.toml editor against the template text the devkit's stand-in aziot-edge ships (which
keeps the real template's traps), checked with real TOML parsers: tomllib, and the stand-in
runtime's own `iotedge config apply` parser (devkit/packages/runtime/aziot_standin/superconfig.py),
which refuses what the real one refuses."""
import os
import sys
import tomllib

import pytest
from azext_edgetpm.errors import DeviceError, LocalFileError

from azext_edgetpm.edge.configtoml import DpsTpmSettings, edit_config, parse_auth_key_index, summarize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TEMPLATE_FILE = os.path.join(REPO, "devkit", "packages", "runtime", "files", "config.toml.edge.template")
STANDIN = os.path.join(REPO, "devkit", "packages", "runtime")


@pytest.fixture(scope="module")
def template():
    if not os.path.exists(TEMPLATE_FILE):
        pytest.skip("the devkit's stand-in template is not in this checkout")
    with open(TEMPLATE_FILE, encoding="utf-8") as handle:
        return handle.read().replace("@EDGE_VERSION@", "1.5.10").replace(
            "@AGENT_IMAGE@", "mcr.microsoft.com/azureiotedge-agent:1.5")


@pytest.fixture(scope="module")
def superconfig():
    sys.path.insert(0, STANDIN)
    try:
        from aziot_standin import superconfig as module  # pylint: disable=import-error
    finally:
        sys.path.remove(STANDIN)
    return module


SETTINGS = DpsTpmSettings(id_scope="0ne00ABCDEF", registration_id="a" * 64,
                          global_endpoint="https://global.azure-devices-provisioning.net",
                          payload_uri="file:///var/secrets/aziot/identityd/dps-additional-data.json",
                          auto_reprovisioning_mode="OnErrorOnly", tcti="swtpm:host=127.0.0.1,port=2321")


def test_template_itself_has_the_traps(template):
    # Uncommenting the template's TPM block as the documentation says gives a file whose
    # auto_reprovisioning_mode is not valid TOML, and whose auth_key_index is a string.
    assert "# auto_reprovisioning_mode = Dynamic" in template
    assert '# auth_key_index = "0x00_01_00"' in template
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads("auto_reprovisioning_mode = Dynamic\n")


def test_from_template(template, superconfig):
    edit = edit_config(template, SETTINGS)
    data = tomllib.loads(edit.text)
    # Top level, before any table: tomllib sees it at the root, the runtime's parser accepts it.
    assert data["auto_reprovisioning_mode"] == "OnErrorOnly"
    first_table = edit.text.index("\n[")
    assert edit.text.index("auto_reprovisioning_mode = ") < first_table
    assert "auto_reprovisioning_mode" not in data["provisioning"]["attestation"]
    assert data["provisioning"] == {
        "source": "dps", "global_endpoint": "https://global.azure-devices-provisioning.net",
        "id_scope": "0ne00ABCDEF",
        "payload": {"uri": "file:///var/secrets/aziot/identityd/dps-additional-data.json"},
        "attestation": {"method": "tpm", "registration_id": "a" * 64}}
    assert data["tpm"] == {"tcti": "swtpm:host=127.0.0.1,port=2321", "auth_key_index": 0x100}
    assert "auth_key_index = 0x00_01_00" in edit.text
    # Every comment line of the template survives.
    assert [line for line in template.splitlines() if line.startswith("#")] == \
        [line for line in edit.text.splitlines() if line.startswith("#") and "az edge-tpm" not in line]
    parsed = superconfig.parse(edit.text)
    assert parsed["auto_reprovisioning_mode"] == "OnErrorOnly"
    assert parsed["provisioning"]["attestation"] == {"method": "tpm", "registration_id": "a" * 64}
    assert parsed["provisioning"]["payload_uri"] == SETTINGS.payload_uri
    assert parsed["tpm"]["auth_key_index"] == 0x100
    # Applying the same settings again changes nothing.
    again = edit_config(edit.text, SETTINGS)
    assert again.changes == [] and again.text == edit.text


def test_mode_left_in_a_table_moves_to_top_level(superconfig):
    # The documentation's snippet: the mode after [provisioning.attestation] belongs to that table
    # and the runtime ignores it (falls back to Dynamic).
    seed = ('[provisioning]\nsource = "dps"\nglobal_endpoint = "https://global.azure-devices-provisioning.net"\n'
            'id_scope = "0ne00ABCDEF"\n\n[provisioning.attestation]\nmethod = "tpm"\nregistration_id = "x"\n'
            'auto_reprovisioning_mode = "AlwaysOnStartup"\n')
    assert superconfig.parse(seed)["auto_reprovisioning_mode"] == "Dynamic"
    edit = edit_config(seed, DpsTpmSettings("0ne00ABCDEF", "x"))
    assert superconfig.parse(edit.text)["auto_reprovisioning_mode"] == "AlwaysOnStartup"
    assert tomllib.loads(edit.text)["provisioning"]["attestation"] == {"method": "tpm", "registration_id": "x"}
    assert any("removed provisioning.attestation.auto_reprovisioning_mode" in c for c in edit.changes)


def test_existing_file_keeps_comments_and_unrelated_settings(superconfig):
    existing = ('# Site config, do not lose this comment\nhostname = "edge-07"\n\n'
                '[provisioning]\nsource = "manual"\n'
                'connection_string = "HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=a2V5"\n\n'
                '[tpm]\nauth_key_index = "0x00_01_00"  # quoted, as the template has it\n\n'
                '[agent]\nname = "edgeAgent"\ntype = "docker"\n\n[agent.config]\n'
                'image = "mcr.microsoft.com/azureiotedge-agent:1.5"  # pinned by ops\n')
    # The quoted auth_key_index is what the real runtime refuses.
    with pytest.raises(superconfig.ConfigError, match="expected u32"):
        superconfig.parse(existing)
    edit = edit_config(existing, DpsTpmSettings("0ne00ABCDEF", "dev-1", auto_reprovisioning_mode="Dynamic"))
    assert edit.text.startswith("# Site config, do not lose this comment\nhostname = \"edge-07\"\n")
    assert "# pinned by ops" in edit.text
    data = tomllib.loads(edit.text)
    assert data["hostname"] == "edge-07"
    assert data["agent"]["config"]["image"] == "mcr.microsoft.com/azureiotedge-agent:1.5"
    assert "connection_string" not in data["provisioning"]
    assert data["tpm"]["auth_key_index"] == 0x100
    assert data["auto_reprovisioning_mode"] == "Dynamic"
    assert list(data)[0:2] == ["hostname", "auto_reprovisioning_mode"]
    assert superconfig.parse(edit.text)["provisioning"]["source"] == "dps"
    assert summarize(edit.text)["registrationId"] == "dev-1"


def test_existing_values_are_kept_when_not_given():
    existing = ('auto_reprovisioning_mode = "OnErrorOnly"\n\n[provisioning]\nsource = "dps"\n'
                'payload = { uri = "file:///var/secrets/p.json" }\n\n[tpm]\ntcti = "tabrmd"\nauth_key_index = 0x00_01_01\n')
    edit = edit_config(existing, DpsTpmSettings("0ne00ABCDEF", "dev-1"))
    data = tomllib.loads(edit.text)
    assert data["auto_reprovisioning_mode"] == "OnErrorOnly"
    assert data["provisioning"]["payload"] == {"uri": "file:///var/secrets/p.json"}
    assert data["tpm"] == {"tcti": "tabrmd", "auth_key_index": 0x101}


def test_refusals():
    with pytest.raises(DeviceError, match="nested mode"):
        edit_config('parent_hostname = "gateway"\n', DpsTpmSettings("s", "r"))
    with pytest.raises(LocalFileError, match="not valid TOML"):
        edit_config("auto_reprovisioning_mode = Dynamic\n", DpsTpmSettings("s", "r"))
    with pytest.raises(LocalFileError, match="auth_key_index"):
        edit_config('[tpm]\nauth_key_index = "high"\n', DpsTpmSettings("s", "r"))


@pytest.mark.parametrize("value, expected", [("0x00_01_00", 0x100), (0x100, 0x100), ("256", 256), ("0o17", 15),
                                             ("nope", None), (True, None)])
def test_parse_auth_key_index(value, expected):
    assert parse_auth_key_index(value) == expected


@pytest.mark.parametrize("text", ['agent = "x"\n', '[agent]\nconfig = 3\n', '[agent.config]\nimage = 1\n'])
def test_summarize_reads_any_agent_shape_a_device_holds(text):
    # A device's config.toml is the device's: an [agent] of another shape is no image, not a traceback.
    assert summarize(text)["agentImage"] is None
