"""``python -m devkit.packages {build,serve}``

- ``build [--out DIR]`` builds (or reuses) the stand-in repository and prints its path.
- ``serve --host-ip IP [--host-ip IP ...] [--repo DIR] [--port N] [--section-file F]``
  builds it if needed, serves it until SIGTERM/SIGINT and writes the devkit.json section
  (JSON) to ``F`` (or stdout) once it is listening.
"""
import argparse
import json
import os
import signal
import sys
import threading

from .repo import build_repo
from .server import AptRepo

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), ".devkit", "packages", "repo")


def _parser():
    p = argparse.ArgumentParser(prog="python -m devkit.packages",
                                description="Stand-in IoT Edge packages and their repository")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or reuse) the repository")
    b.add_argument("--out", default=DEFAULT_DIR)
    s = sub.add_parser("serve", help="serve the repository in the foreground")
    s.add_argument("--repo", default=DEFAULT_DIR)
    s.add_argument("--host-ip", action="append", required=True,
                   help="address to bind (repeatable; the first is the one in the apt line)")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--section-file", help="write the devkit.json section here (mode 0644)")
    return p


def main(argv=None):
    """Entry point."""
    args = _parser().parse_args(argv)
    if args.command == "build":
        print(build_repo(args.out))
        return 0
    repo = AptRepo(build_repo(args.repo), args.host_ip, port=args.port)
    section = dict(repo.start(), pid=os.getpid())
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    text = json.dumps(section, indent=1) + "\n"
    if args.section_file:
        tmp = args.section_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.section_file)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    try:
        stop.wait()
    finally:
        repo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
