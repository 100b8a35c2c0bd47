"""Help reads well in az at any terminal width: long summaries hold whole paragraphs (az wraps
each line of a long summary on its own, so a hard line break inside a sentence leaves an orphan
word at every width), and no option repeats the default az already prints."""
import re

import yaml

from azext_edgetpm._help import helps
from azext_edgetpm.tests.latest.azcli import az


def test_long_summaries_are_whole_paragraphs():
    for name, text in helps.items():
        if not name.startswith("edge-tpm"):
            continue  # (az's own entries, when other tests loaded its modules in this process)
        summary = yaml.safe_load(text).get("long-summary") or ""
        for paragraph in summary.split("\n"):
            assert not paragraph or re.search(r"[.:;)]$", paragraph.strip()), (name, paragraph[-60:])


def test_help_shows_azure_iot_aliases_and_each_default_once(capsys):
    capsys.readouterr()
    out = az("edge-tpm", "enrollment", "create", "-h", output=None)
    assert out.rc == 0
    text = capsys.readouterr().out  # (az prints help straight to stdout)
    for alias in ("--eid", "--ek ", "--ee", "--ih", "--ap", "--tags", "--props", "--ps", "--rp", "--attestation-type"):
        assert alias in text, alias
    assert text.count("Default: True") + text.count("Default: true") == 1  # --edge-enabled, said once
    flat = " ".join(text.split())
    assert "Known_hosts" not in flat and "az configure --defaults group=<name>" in flat
