"""Host file helpers of the rig: atomic writes, the tail of a log, lazy unmounts."""
import os
import subprocess
import threading


def atomic_write(path, text, mode=0o644):
    """Replace ``path`` with ``text`` at once (readers see the old file or the new one)."""
    tmp = "%s.tmp.%d.%d" % (path, os.getpid(), threading.get_ident())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def tail(path, lines=25):
    """The last ``lines`` lines of a log file (empty if it cannot be read)."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def unmount_under(path):
    """Lazily unmount anything the host still has mounted under ``path`` (normally none)."""
    prefix = path.rstrip("/") + "/"
    targets = []
    with open("/proc/self/mountinfo", "r", encoding="utf-8") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt.startswith(prefix):
                targets.append(mnt)
    for mnt in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
