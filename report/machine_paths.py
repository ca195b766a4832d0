"""Paths of the machines that collected and built: a page shows file names, never them.

The store records command lines, model paths and the engine's binaries as the collecting
machine saw them (`/home/alice/models/x.gguf`, `C:\\Users\\bob\\shimmy.exe`). A published page
names the file and drops the directory: the directory tells a reader nothing they can use and
tells everyone the maintainer's user name and layout. The build also refuses a page that
still contains a path of the machine building it (`find_build_machine_path`), which catches
what a new template forgets to pass through here.
"""

from __future__ import annotations

import html
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")
# Keys of the campaign configuration whose values are URL paths, not file paths.
_URL_KEYS = frozenset({"health_path", "endpoint", "endpoints"})
# The commands that start a campaign, however they were invoked: what the reader types
# instead is the nox session, from the repository root.
_COLLECT_PREFIXES: tuple[tuple[str, ...], ...] = (
    ("moe-evidence", "collect"),
    ("-m", "moe_evidence", "collect"),
    ("-m", "collector", "run"),
)


def is_machine_path(text: str) -> bool:
    """An absolute file path: POSIX with at least two parts (`/health` is a URL path, not
    a file), or Windows (`C:\\...`, `\\\\server\\share`)."""
    if _WINDOWS_ABSOLUTE.match(text):
        return True
    parts = [p for p in text.split("/") if p]
    return text.startswith("/") and len(parts) >= 2 and "\n" not in text


def file_name(text: str) -> str:
    """The last part of a POSIX or Windows path."""
    return re.split(r"[\\/]", text.rstrip("\\/"))[-1] or text


def public_arg(arg: str) -> str:
    """One command-line argument with any machine path reduced to its file name
    (`--model=/a/b.gguf` too)."""
    if is_machine_path(arg):
        return file_name(arg)
    flag, eq, value = arg.partition("=")
    if eq and flag.startswith("-") and is_machine_path(value):
        return f"{flag}={file_name(value)}"
    return arg


def public_argv(argv: Iterable[object]) -> list[str]:
    return [public_arg(str(a)) for a in argv]


def public_value(value: Any, key: str = "") -> Any:
    """A JSON-like value (the campaign configuration, the engine identity) with every file
    path reduced to its file name; URL paths are left alone."""
    if isinstance(value, dict):
        return {k: public_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [public_value(v, key) for v in value]
    if isinstance(value, str) and key not in _URL_KEYS:
        return public_arg(value)
    return value


def user_command(command: Sequence[object]) -> list[str]:
    """The command a reader runs to collect the same way: `nox -s collect -- ARGS`, from
    however the campaign was started (the CLI entry point, `python -m ...`, an older
    collector), with machine paths reduced to file names."""
    argv = [str(a) for a in command]
    for prefix in _COLLECT_PREFIXES:
        for start in range(len(argv) - len(prefix) + 1):
            head = [file_name(a) for a in argv[start : start + len(prefix)]]
            if head == list(prefix):
                rest = public_argv(argv[start + len(prefix) :])
                return ["nox", "-s", "collect", *(["--", *rest] if rest else [])]
    return public_argv(argv)


def build_machine_paths(*paths: Path | None) -> list[str]:
    """The directories of this machine that no page may name: the home directory, the
    Python installation running the build, and the given ones (project root, store)."""
    found = {Path.home(), Path(sys.prefix), *(p for p in paths if p is not None)}
    out = []
    for path in found:
        text = str(path.resolve() if path.exists() else path)
        # A root-level directory (`/`, `/usr`, `C:\\`) is too short to be anyone's
        # layout, and would match every absolute path a page quotes on purpose.
        if len([p for p in re.split(r"[\\/]", text) if p]) >= 2 or text == str(Path.home()):
            out.append(text)
    return sorted(set(out), key=len, reverse=True)


def find_build_machine_path(text: str, forbidden: Sequence[str]) -> str | None:
    """The first of `forbidden` that `text` contains as a path (entities decoded: the
    escaper writes `/root/&#46;cache`), or None."""
    plain = html.unescape(text)
    for path in forbidden:
        for form in {path, path.replace(os.sep, "/")}:
            if re.search(re.escape(form) + r"(?=[\\/\s\"'<)`]|$)", plain, re.MULTILINE):
                return path
    return None
