"""Debian's Chromium, headless, for the HTML report tests: one screenshot and the DOM after its
script ran (two launches; no network, a throwaway profile)."""
import shutil
import subprocess

import pytest

# The timeline's colours (fleet/report.STATES) as a screenshot shows them.
COLOURS = {"waiting": (0xc9, 0xce, 0xd6), "running": (0x2f, 0x7e, 0xd8), "done": (0x3a, 0xa5, 0x5d),
           "failed": (0xd9, 0x53, 0x4f)}


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_page(path, workdir):
    """(screenshot file, DOM text) of the page at `path` (pathlib), Chromium's files in `workdir`."""
    exe = chromium()
    if not exe:
        pytest.fail("chromium is missing: scripts/bootstrap.sh installs it")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={workdir / 'prof'}"]
    shot = workdir / "shot.png"
    proc = subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=900,900", path.as_uri()],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    dom = subprocess.run([exe, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=180,
                         check=False).stdout
    return shot, dom


def chart_colours(shot, box=(0, 100, 800, 450)):
    """Pixels of each timeline colour in the chart's region of the screenshot (below the counts)."""
    from PIL import Image
    image = Image.open(shot).convert("RGB")
    counted = {colour: count for count, colour in image.crop(box).getcolors(1 << 20)}
    return {name: counted.get(colour, 0) for name, colour in COLOURS.items()}
