"""Sources shipped inside the stand-in packages (importable here only for tests).

``aziot_standin`` is the stand-in IoT Edge runtime, ``run.py`` its entry point and
``files/`` the other shipped files (systemctl shim, dockerd/docker, init scripts, the
config template). On a device they live under /usr/lib/aziot-standin and friends.
"""
