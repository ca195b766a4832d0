"""The Vega bundle (Vega, Vega-Lite, vega-embed) that draws the charts offline.

vl-convert builds it (`javascript_bundle`) in about five seconds, holding the
GIL, so it is built once per vl-convert and Vega-Lite version into the user
cache directory, in a child process that runs while the build queries the store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common.errors import BuildError

CACHE_ENV = "EVIDENCE_CACHE_DIR"
BUNDLE_NAME = "vega-bundle.js"

_SCRIPT = """
import os, sys, vl_convert
out, version = sys.argv[1], sys.argv[2]
tmp = out + ".part"
with open(tmp, "w", encoding="utf-8") as f:
    f.write(vl_convert.javascript_bundle(vl_version=version))
os.replace(tmp, out)
"""


@dataclass
class Bundle:
    """The Vega bundle: its cache path, and the child process building it, if any."""

    path: Path
    process: subprocess.Popen[bytes] | None


def cache_dir() -> Path:
    """$EVIDENCE_CACHE_DIR, else the platform's user cache dir for this tool."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("moe-evidence"))


def start_bundle(vl_version: str) -> Bundle:
    """The cached bundle, or a child process building it."""
    import vl_convert as vlc

    version = getattr(vlc, "__version__", "unknown")
    path = cache_dir() / "vega" / f"vl-convert-{version}-vega-lite-{vl_version}.js"
    if path.is_file():
        return Bundle(path, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(path), vl_version],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return Bundle(path, process)


def write_bundle(bundle: Bundle, out_dir: Path) -> Path:
    """Wait for the bundle if it is being built, and copy it into the site's assets."""
    if bundle.process is not None:
        _, err = bundle.process.communicate()
        if bundle.process.returncode != 0 or not bundle.path.is_file():
            raise BuildError(
                "vl-convert could not build the Vega bundle: "
                + (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / BUNDLE_NAME
    shutil.copyfile(bundle.path, target)
    return target
