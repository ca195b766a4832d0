"""Running MkDocs (strict) and checking that the built site is self-contained.

MkDocs runs in-process with `strict` on and link/anchor validation set to
warn in mkdocs.yml, so a broken link is a warning and strict mode turns it
into a failure. The first warning becomes a `BuildError` naming the page and
line of the link.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from common.errors import BuildError

_LINK_WARNING = re.compile(
    r"Doc file '(?P<file>[^']+)' contains (?:a|an) (?:[\w ]+ )?link '(?P<link>[^']+)'"
)
# Resources a page loads from elsewhere: the site must work with the network off.
_EXTERNAL = re.compile(
    r"""<(?:script|img|iframe|source|audio|video|embed)\b[^>]*\bsrc=["']?(?:https?:)?//"""
    r"""|<link\b[^>]*\bhref=["']?(?:https?:)?//[^>]*>"""
    r"""|@import\s+(?:url\()?["']?(?:https?:)?//|url\(["']?(?:https?:)?//""",
    re.IGNORECASE,
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _locate(message: str, docs: Path) -> str:
    """'docs/page.md:LINE: message' for a link warning, else the message."""
    match = _LINK_WARNING.search(message)
    if not match:
        return message
    page = docs / match.group("file")
    line = 0
    if page.is_file():
        for i, text in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if match.group("link") in text:
                line = i
                break
    where = f"{docs.name}/{match.group('file')}"
    return f"{where}:{line}: {message}" if line else f"{where}: {message}"


# The config the build writes beside mkdocs.yml: mkdocs.yml plus the navigation made
# from report/pages.py. `build` and mike's `deploy` both use it.
GENERATED_CONFIG = "mkdocs.generated.yml"


def write_config(root: Path, nav: list[Any]) -> Path:
    """Write GENERATED_CONFIG into `root`: mkdocs.yml (inherited) and `nav`."""
    import yaml

    path = root / GENERATED_CONFIG
    header = (
        "# Written by the build (report/site.py) from mkdocs.yml and the pages declared in\n"
        "# report/pages.py; edit those, not this file.\n"
    )
    body = yaml.safe_dump(
        {"INHERIT": "mkdocs.yml", "nav": nav},
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
    )
    path.write_text(header + body, encoding="utf-8")
    return path


def mkdocs_build(config_file: Path, site_dir: Path, versioned: bool = True) -> None:
    """`mkdocs build --strict` into `site_dir`; the first warning becomes a BuildError.
    `versioned`: keep mkdocs.yml's version selector (mike). An unversioned build drops it:
    the selector fetches ../versions.json, which a browser refuses under file:// (a console
    error on every page of a site the README says to open from disk)."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort, MkDocsException

    collector = _Collect()
    logger = logging.getLogger("mkdocs")
    logger.addHandler(collector)
    try:
        try:
            # Abort is a SystemExit: left alone, a bad mkdocs.yml ended the build
            # with exit 1 and not a word (the reason only went to mkdocs' logger).
            config = load_config(str(config_file), strict=True, site_dir=str(site_dir))
        except (Abort, MkDocsException) as exc:
            first = collector.messages[0] if collector.messages else str(exc)
            raise BuildError(f"{config_file.name}: {first}") from exc
        if not versioned:
            config["extra"].pop("version", None)
        docs = Path(config["docs_dir"])
        try:
            build(config)
        except (Abort, MkDocsException) as exc:
            first = collector.messages[0] if collector.messages else str(exc)
            raise BuildError(_locate(first, docs)) from exc
        if collector.messages:
            raise BuildError(_locate(collector.messages[0], docs))
    finally:
        logger.removeHandler(collector)


def check_offline(site_dir: Path) -> None:
    """Refuse a site whose pages or stylesheets load anything from the network."""
    for path in sorted(site_dir.rglob("*")):
        if path.suffix not in (".html", ".css") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        match = _EXTERNAL.search(text)
        if match:
            line = text.count("\n", 0, match.start()) + 1
            raise BuildError(
                f"{path.relative_to(site_dir.parent)}:{line}: the site loads a resource from the "
                f"network ({match.group(0)[:80]!r}); it must work offline"
            )


def write_local_versions(site_dir: Path, title: str) -> None:
    """A versions.json for an unpublished build, so Material's version selector
    (which fetches it) has an answer when the site is served from its own root."""
    entry = [{"version": ".", "title": title, "aliases": []}]
    (site_dir / "versions.json").write_text(json.dumps(entry), encoding="utf-8")
