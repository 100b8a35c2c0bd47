"""Uploads staged for root on a simulated device (issue 8, defect 7): a connection that drops
between the upload and the cleanup leaves the staged copy in the fixed staging place only, and
the next run removes it."""
import uuid

import pytest

from azext_edgetpm.errors import TransientError
from azext_edgetpm.remote.session import RemoteSession
from azext_edgetpm.remote.transfer import STAGING_ROOT
from azext_edgetpm.remote.target import resolve_target

pytestmark = pytest.mark.devkit


def _session(dev, user):
    target = resolve_target(f"{dev.users[user]['user']}@{dev.host}:{dev.port}", ssh_key=dev.key(user),
                            connect_timeout=10)
    return RemoteSession(target, known_hosts=dev.known_hosts).connect()


def _holding(dev, marker):
    """Files in the places a staged copy could stay (temporary directories, the staging place, homes)
    whose content has `marker`."""
    found = dev.exec(f"grep -rlsF -- {marker} /tmp /var/tmp {STAGING_ROOT} /home /etc/edgetpm-test || true",
                     timeout=120).stdout
    return sorted(found.split())


@pytest.mark.parametrize("user", ["root", "admin"])
def test_a_drop_between_upload_and_cleanup_is_cleaned_by_the_next_run(rig, user):
    dev = rig.by_variant("mfg")
    marker = "staged-" + uuid.uuid4().hex
    dest = "/etc/edgetpm-test/" + user + ".conf"
    dev.exec(["mkdir", "-p", "/etc/edgetpm-test"], check=True)
    with _session(dev, user) as session:
        real_upload = session.upload

        def upload_then_drop(data, path, mode=0o600, **kwargs):
            # Fault injection (the real upload, then the connection closes for real, as a network
            # that drops it would): nothing after the upload reaches the device.
            real_upload(data, path, mode, **kwargs)
            session.client.get_transport().close()

        session.upload = upload_then_drop
        with pytest.raises(TransientError):
            session.install_file(marker.encode(), dest, 0o600)
    left = _holding(dev, marker)
    assert len(left) == 1 and left[0].startswith(STAGING_ROOT + "/"), left  # the staged copy, nowhere else
    mode, owner = dev.exec(["stat", "-c", "%a %U", STAGING_ROOT + "/" + dev.users[user]["user"]],
                           check=True).stdout.split()
    assert mode == "700" and owner == dev.users[user]["user"]
    assert dev.exec(["stat", "-c", "%a %U", STAGING_ROOT], check=True).stdout.split() == ["711", "root"]

    with _session(dev, user) as session:  # the re-run
        session.install_file(b"second run\n", dest, 0o600)
    assert _holding(dev, marker) == [], "the next run removed the staged copy"
    assert dev.exec(["cat", dest], check=True).stdout == "second run\n"
    assert dev.exec(["find", STAGING_ROOT, "-mindepth", "2"], check=True).stdout == ""
    dev.exec(["rm", "-rf", "/etc/edgetpm-test"])
