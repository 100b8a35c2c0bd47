"""Entry point of the stand-in runtime on a device.

``run.py iotedge ARGS...``      the `iotedge` command
``run.py service UNIT ACTION``  start/stop/restart/status of an aziot unit (init.d scripts)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aziot_standin import cli, services  # noqa: E402  (path set just above)


def main(argv):
    """Dispatch to the iotedge CLI or the service runner."""
    if argv[:1] == ["iotedge"]:
        return cli.main(argv[1:])
    if argv[:1] == ["service"]:
        return services.main(argv[1:])
    sys.stderr.write("usage: run.py {iotedge ARGS|service UNIT ACTION}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
