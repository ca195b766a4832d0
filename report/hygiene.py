"""The hygiene check: a generated page may not contain what made Shimmy's last
whitepaper need corrections.

Rejected, with `BuildError("docs/memory.md:42: ...")` naming the first one:
unresolved placeholders (`XX`, `X.X`, `TODO`, `FIXME`, `TBD`), `None`, `NaN`
or infinities printed as figures, merge-conflict markers, and any path of the machine
building the site (its home, the project, the store, the Python running the build; see
report.machine_paths).

Untrusted text (model output, prompts) is shown verbatim and may legitimately
say `None` or `TODO`; the formatting filters put it in elements of class
`untrusted`, escaped so that it cannot contain a closing tag, and the check
skips those elements. So is the user's own text (labels, release names, file names:
`user_texts`): a release called "TBD" is a name, not a missing figure. The figure
formatters refuse None and non-finite values themselves (report.formatting.number).
Docstrings quoted from this repository's code (class `from-code`) are checked for
placeholders and conflict markers but may mention `None`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import BuildError
from report.formatting import escape_text, inline_json, visible_controls
from report.machine_paths import find_build_machine_path

_UNTRUSTED = re.compile(
    r'<(span|pre|code)\b[^>]*\bclass="[^"]*\buntrusted\b[^"]*"[^>]*>.*?</\1>', re.DOTALL
)
# Model output and prompts (transcripts, quoted phrases) may mention any path; what the
# tool itself prints (commands, configuration, file names) may not name this machine's.
_MODEL_TEXT = re.compile(
    r'<pre class="untrusted transcript">.*?</pre>|<span class="untrusted">.*?</span>', re.DOTALL
)
_FROM_CODE = re.compile(r'<div class="from-code"[^>]*>.*?</div><!-- from-code -->', re.DOTALL)


@dataclass(frozen=True)
class Rule:
    """One thing a generated page may not contain."""

    pattern: re.Pattern[str]
    message: str
    in_code_docs: bool  # also applies inside quoted docstrings


RULES: tuple[Rule, ...] = (
    Rule(re.compile(r"^(?:<{7}|>{7})(?: |$)|^={7}$", re.MULTILINE), "merge-conflict marker", True),
    Rule(
        re.compile(r"(?<![\w.])X{2,}(?![\w])|(?<![\w.])X\.X+(?![\w])"),
        "unresolved placeholder",
        True,
    ),
    Rule(re.compile(r"\b(?:TODO|FIXME|TBD)\b"), "unresolved placeholder", True),
    Rule(
        re.compile(r"\b(?:None|NaN|nan|inf|Infinity)\b"), "missing value printed as a figure", False
    ),
)


def _blank(match: re.Match[str]) -> str:
    """Keep line structure (so line numbers stay right) but drop the text."""
    return "\n" * match.group(0).count("\n")


def _user_text_pattern(user_texts: Sequence[str]) -> re.Pattern[str] | None:
    """Every way a page prints the user's texts: as given and as the filters escape them.
    Longest first, so a label that contains another is removed whole."""
    forms = {
        form
        for t in user_texts
        if t.strip()
        for form in (t, str(escape_text(t)), inline_json(visible_controls(t))[1:-1])
    }
    if not forms:
        return None
    ordered = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(re.escape(f) for f in ordered if "\n" not in f))


def check_text(
    text: str, name: str, machine_paths: Sequence[str] = (), user_texts: Sequence[str] = ()
) -> None:
    """Raise BuildError naming `name` and the line of the first problem in `text`;
    `machine_paths`: directories of the building machine no page may name; `user_texts`:
    the user's labels and names, exempt from the placeholder rules."""
    users = _user_text_pattern(user_texts)
    trusted = _UNTRUSTED.sub(_blank, text)
    if users is not None:
        trusted = users.sub("", trusted)
    outside_docs = _FROM_CODE.sub(_blank, trusted)
    found: list[tuple[int, str]] = []
    for rule in RULES:
        source = trusted if rule.in_code_docs else outside_docs
        match = rule.pattern.search(source)
        if match:
            line = source.count("\n", 0, match.start()) + 1
            found.append((line, f"{rule.message} {match.group(0)!r}"))
    tool_text = _MODEL_TEXT.sub(_blank, text)
    for number, line_text in enumerate(tool_text.split("\n"), start=1):
        path = find_build_machine_path(line_text, machine_paths)
        if path is not None:
            found.append((number, f"path of the building machine {path!r}"))
            break
    if found:
        line, problem = min(found)
        raise BuildError(f"{name}:{line}: {problem} in a generated page")


def check_pages(
    paths: list[Path],
    root: Path,
    machine_paths: Sequence[str] = (),
    user_texts: Sequence[str] = (),
) -> None:
    """Check every generated Markdown page; names in errors are relative to `root`."""
    for path in paths:
        check_text(
            path.read_text(encoding="utf-8"),
            str(path.relative_to(root)),
            machine_paths,
            user_texts,
        )
