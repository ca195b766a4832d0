"""Template filters: every figure becomes text here, and only here.

Two rules hold for everything a page prints:

1. Text from the store (model output, prompts, labels, errors, paths) is
   untrusted. It is HTML-escaped *and* every character Markdown or its
   extensions give meaning to becomes a numeric character reference, so it
   can neither open a tag nor start a table, link, attribute list or include.
   Control characters (Python-Markdown uses STX/ETX internally) are shown as
   their Unicode control pictures. Untrusted text that might contain words
   the hygiene check rejects (model output, prompts) is wrapped in an element
   of class `untrusted`, which the check skips.
2. A figure is never printed bare: a `Quantity` says its source, a `Missing`
   says "not measured" and why, a `Stat` carries N and its spread. `None`,
   NaN and floats reaching a template unformatted are build errors.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from common.controls import UNSHOWABLE
from common.errors import BuildError
from evidence.statistics import MIN_N_FOR_INTERVAL
from report.machine_paths import public_arg, public_argv, public_value
from report.values import SOURCE_TEXT, Missing, Quantity, RatioFigure, Stat

if TYPE_CHECKING:
    from report.context.history import Change, Release


def _shown_as(code: int) -> str:
    # C0 controls and DEL as their control pictures; the rest (C1, and the bidirectional
    # controls such as U+202E, which would reorder the text after them: an output or a
    # label could make a page read differently from what is stored) as their code point.
    if code < 0x20:
        return chr(0x2400 + code)
    return "\u2421" if code == 0x7F else f"\u2039U+{code:04X}\u203a"


# Every character common.controls counts as one that must not act: shown, not applied.
_VISIBLE = {c: _shown_as(c) for c in UNSHOWABLE}


def _table(chars: str) -> dict[int, str]:
    table = {ord(c): f"&#{ord(c)};" for c in chars}
    # Newline and tab are handled by the caller (kept in blocks, spaces inline).
    table.update({c: v for c, v in _VISIBLE.items() if c not in (0x09, 0x0A)})
    return table


# Inline, text never starts a line (newlines become spaces), so only what has
# meaning mid-line is escaped: HTML, emphasis, code, links, attribute lists,
# tables, headings' ids. In blocks, everything Markdown could read is.
_INLINE = _table("&<>\"'\\`*_{}[]#|")
_BLOCK = _table("&<>\"'\\`*_{}[]()#+-.!|~^=:$%")
_LINE_START = re.compile(r"^[-+=:>#.]")
MIB = 1 << 20


def visible_controls(text: str) -> str:
    """`text` with its control characters shown, not applied (for chart labels, which are
    not HTML-escaped but drawn as SVG text): newline and tab included, since a chart label
    is one line. The chart renderer aborts the whole process on a character XML cannot
    hold (NUL, ESC, U+FFFF), so none may reach it."""
    return text.translate(_VISIBLE)


def inline_json(value: Any) -> str:
    """JSON safe to inline in a <script> element (no `<`, `>` or `&`)."""
    text = json.dumps(value, allow_nan=False, sort_keys=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def escape_text(value: object, *, inline: bool = True) -> Markup:
    """`value` as inert text for Markdown and HTML (see the module docstring)."""
    raw = str(value)
    if not inline:
        return Markup(raw.translate(_BLOCK))
    raw = raw.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    # Should a template ever put a value at the start of a line, it still
    # cannot open a list, quote or heading there.
    start = _LINE_START.match(raw)
    if start is None:
        return Markup(raw.translate(_INLINE))
    return Markup(raw[: start.end()].translate(_BLOCK) + raw[start.end() :].translate(_INLINE))


def untrusted(value: object) -> Markup:
    """Untrusted inline text, escaped, in a span the hygiene check skips."""
    return Markup('<span class="untrusted">') + escape_text(value) + Markup("</span>")


def untrusted_code(value: object) -> Markup:
    """Untrusted inline text shown as code (paths, hashes, argv); a machine path is shown
    as its file name (report.machine_paths)."""
    text = public_arg(value) if isinstance(value, str) else value
    return Markup('<code class="untrusted">') + escape_text(text) + Markup("</code>")


def code(value: object) -> Markup:
    """Inline code for identifiers the store holds (ids, digests, column names)."""
    return Markup("<code>") + escape_text(value) + Markup("</code>")


def transcript(value: object) -> Markup:
    """A block of untrusted text (model output), escaped, line breaks kept."""
    body = escape_text(value, inline=False)
    return Markup('<pre class="untrusted transcript">') + body + Markup("</pre>")


def from_code(value: object) -> Markup:
    """Text written in this repository's code (metric definitions, docstrings): Markdown,
    trusted like the templates themselves."""
    return Markup(str(value))


def json_block(value: object) -> Markup:
    """JSON (a dict, list, or JSON text from the store) pretty-printed as an escaped block."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return transcript(value)
    text = json.dumps(
        public_value(value), indent=2, sort_keys=True, ensure_ascii=False, default=str
    )
    return (
        Markup('<pre class="untrusted json">') + escape_text(text, inline=False) + Markup("</pre>")
    )


def shell_block(argv: Iterable[object]) -> Markup:
    """A command line, shell-quoted, as an escaped block; machine paths as file names."""
    text = shlex.join(public_argv(argv))
    return (
        Markup('<pre class="untrusted command">')
        + escape_text(text, inline=False)
        + Markup("</pre>")
    )


def fixed(x: float, digits: int) -> str:
    """`x` to `digits` decimals, never "-0.0": a figure that rounds to zero has no sign
    (a value of -1e-17, float noise of a parallel aggregate, must print as the same
    "0.0" its +1e-17 twin does, or two builds of one store differ)."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def number(value: float | int | None) -> str:
    """A number with sensible precision: 1,234 / 412 / 46.9 / 3.52 / 0.0312."""
    if value is None:
        raise BuildError("a missing value reached number(); the context must say why it is missing")
    if isinstance(value, bool):
        raise BuildError("a boolean reached number()")
    x = float(value)
    if not math.isfinite(x):
        raise BuildError(f"a non-finite value ({x}) reached number()")
    if isinstance(value, int):
        return f"{value:,}"
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return fixed(x, 1)
    if a >= 1:
        return fixed(x, 2)
    if a == 0:
        return "0"
    return f"{x:.2g}"


def with_unit(value: float | int | None, unit: str) -> Markup:
    """A value in its unit; memory always in MiB (one unit across tables and charts)."""
    if unit == "bytes" and value is not None:
        return Markup(f"{float(value) / MIB:,.1f}&nbsp;MiB")
    if unit == "bytes/s" and value is not None:
        return Markup(f"{float(value) / (1 << 30):,.1f}&nbsp;GiB/s")
    if unit == "params" and value is not None:
        for scale, prefix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
            if abs(value) >= scale:
                return Markup(f"{float(value) / scale:.2f}&nbsp;{prefix}")
        return Markup(number(int(value)))
    if unit == "MiB" and value is not None:
        return Markup(f"{float(value):,.1f}&nbsp;MiB")
    text = number(value)
    if not unit:
        return Markup(text)
    if unit == "%":
        return Markup(f"{fixed(float(value or 0), 1)}&nbsp;%")
    return Markup(text) + Markup("&nbsp;") + escape_text(unit)


def not_measured(reason: str) -> Markup:
    """The one phrasing of a missing figure."""
    return Markup('<span class="not-measured">not measured</span> (') + escape_text(reason) + ")"


def figure(value: Quantity | Missing, show_source: bool = True, brief: bool = False) -> Markup:
    """A `Quantity` with its source (and how it was obtained, unless `brief`), or
    "not measured (why)" for a `Missing`."""
    if isinstance(value, Missing):
        if value.not_applicable:
            return (
                Markup('<span class="not-measured">not applicable</span> (')
                + escape_text(value.reason)
                + Markup(")")
            )
        return not_measured(value.reason)
    text = with_unit(value.value, value.unit)
    if show_source and value.source is not None:
        label = SOURCE_TEXT[value.source]
        css = "estimated" if value.source == "estimated" else "source"
        note = f": {value.note}" if value.note and not brief else ""
        text += Markup(f' <span class="{css}">(') + escape_text(label + note) + Markup(")</span>")
    return text


def figure_brief(value: Quantity | Missing) -> Markup:
    """A figure with its source named but not explained (for narrow table cells)."""
    return figure(value, brief=True)


def stat_mean(s: Stat) -> Markup:
    """The mean in its unit, flagged when any token count in it was an estimate."""
    if s.n == 0 or s.mean is None:
        return not_measured(s.missing or "no value in this group")
    text = with_unit(s.mean, s.unit)
    if s.estimated_n:
        text += Markup(
            f' <span class="estimated">(estimated: {s.estimated_n} of {s.n} token counts '
            "from stream events)</span>"
        )
    return text


def too_few(n: int) -> Markup:
    """The one phrasing of a group too small for a spread or an interval."""
    return Markup(f"N&nbsp;=&nbsp;{n}, too few for an interval")


def stat_sd(s: Stat) -> Markup:
    """The sample standard deviation, or why there is none."""
    if s.n == 0:
        return Markup("no data")
    if s.n < MIN_N_FOR_INTERVAL or s.sd is None:
        return too_few(s.n)
    return with_unit(s.sd, s.unit)


def stat_ci(s: Stat) -> Markup:
    """The 95 % confidence interval of the mean, or why there is none."""
    if s.n == 0:
        return Markup("no data")
    if s.ci_low is None or s.ci_high is None:
        return too_few(s.n)
    if s.ci_low < 0 <= (s.min if s.min is not None else 0):
        # Every figure summarised here is non-negative; a t-interval from very
        # few requests can still reach below zero, which is shown, not hidden.
        return (
            Markup("0&nbsp;–&nbsp;")
            + with_unit(s.ci_high, s.unit)
            + Markup(f' <span class="estimated">(truncated at 0; N&nbsp;=&nbsp;{s.n})</span>')
        )
    return Markup(f"{number(s.ci_low)}&nbsp;–&nbsp;") + with_unit(s.ci_high, s.unit)


def stat_range(s: Stat) -> Markup:
    """Min – max."""
    if s.n == 0 or s.min is None or s.max is None:
        return Markup("no data")
    return Markup(f"{number(s.min)}&nbsp;–&nbsp;") + with_unit(s.max, s.unit)


def stat(s: Stat) -> Markup:
    """Compact: `46.9 ± 2.1 tokens/s (N = 27)`; the spread from N = 3 only
    (MIN_N_FOR_INTERVAL): below, the mean and `(N = 2)`. The compact form sits in wide
    tables, where the pages say once that spreads start at N = 3."""
    if s.n == 0 or s.mean is None:
        return not_measured(s.missing or "no value in this group")
    if s.n >= MIN_N_FOR_INTERVAL and s.sd is not None:
        text = Markup(f"{number(s.mean)}&nbsp;±&nbsp;") + with_unit(s.sd, s.unit)
        text += Markup(f" (N&nbsp;=&nbsp;{s.n})")
    else:
        text = with_unit(s.mean, s.unit) + Markup(f" (N&nbsp;=&nbsp;{s.n})")
    if s.estimated_n:
        text += Markup(' <span class="estimated">(estimated)</span>')
    return text


def ratio(r: RatioFigure) -> Markup:
    """`0.33× (95 % CI 0.31–0.34, N = 27)`, or why there is no ratio or interval."""
    if r.ratio is None:
        return not_measured(r.missing or "one side of the comparison has no data")
    text = Markup(f"{r.ratio:.2f}×")
    n = f", N&nbsp;=&nbsp;{r.n}" if r.n is not None else ""
    if r.ci_low is not None and r.ci_high is not None and r.ci_low <= 0 < r.ratio:
        # A ratio of two positive means cannot be negative: the interval is
        # too wide to bound anything, which is what the reader needs to know.
        text += Markup(f" (95&nbsp;% CI unbounded below: too few requests{n})")
    elif r.ci_low is not None and r.ci_high is not None:
        text += Markup(f" (95&nbsp;% CI {r.ci_low:.2f}–{r.ci_high:.2f}{n})")
    elif r.n is not None:
        text += Markup(" (") + too_few(r.n) + Markup(")")
    else:
        text += Markup(" (too few on one side for an interval)")
    return text


def score(value: float) -> Markup:
    """A score as the scorer states it: 4, 4.5, 0.031 (no padding zeros)."""
    return Markup(f"{float(value):.3g}")


def count(value: int) -> Markup:
    """An integer with thousands separators."""
    return Markup(f"{int(value):,}")


def percent(value: float) -> Markup:
    """A share in [0, 1] as a percentage."""
    return Markup(f"{100.0 * float(value):.1f}&nbsp;%")


def status(value: str) -> Markup:
    """A gate status as a styled badge."""
    css = {"PASS": "pass", "FAIL": "fail"}.get(value, "unmeasured")
    return Markup(f'<span class="gate gate-{css}">') + escape_text(value) + Markup("</span>")


def utc(value: datetime | None) -> Markup:
    """A timestamp in UTC, to the second."""
    if value is None:
        return Markup("not recorded")
    return escape_text(value.strftime("%Y-%m-%d %H:%M:%S UTC"))


def release_text(release: Release) -> str:
    """A release's name as plain text (for chart axes): its label, or the start of
    the unlabelled campaign that stands for it."""
    if release.label is not None:
        return release.label
    return f"unlabelled, started {release.started_utc:%Y-%m-%d %H:%M:%S} UTC"


def release(value: Release) -> Markup:
    """A release's name on a page; an unlabelled campaign says so."""
    if value.label is not None:
        return Markup("<strong>") + escape_text(value.label) + Markup("</strong>")
    return Markup("<em>") + escape_text(release_text(value)) + Markup("</em>")


def source(value: str) -> Markup:
    """Where a figure came from, labelled as `figure` labels it."""
    label = SOURCE_TEXT.get(value, value)  # type: ignore[call-overload]
    css = "estimated" if value == "estimated" else "source"
    return Markup(f'<span class="{css}">(') + escape_text(label) + Markup(")</span>")


_CHANGE_TEXT = {
    "improvement": "improvement",
    "regression": "regression",
    "within": "within the intervals",
    "not judged": "not judged",
}


def change(value: Change | None) -> Markup:
    """How a release compares with the previous one: a flag when the rule fires."""
    if value is None:
        return Markup("first release of this series")
    css = {"improvement": "improvement", "regression": "regression"}.get(value.verdict, "none")
    text = Markup(f'<span class="change change-{css}">') + escape_text(_CHANGE_TEXT[value.verdict])
    if value.higher is not None:
        text += Markup(" (higher)" if value.higher else " (lower)")
    return text + Markup("</span>: ") + escape_text(value.reason)


def anchor(value: object) -> Markup:
    """A value as an HTML id / URL fragment: lower-case letters, digits and hyphens."""
    return Markup(re.sub(r"[^a-z0-9_]+", "-", str(value).lower()).strip("-") or "x")


_LINK_SAFE = re.compile(r"^[A-Za-z0-9._/#-]+$")


def link(value: object) -> Markup:
    """A link target the build made (a page or file path); refuses anything else."""
    text = str(value)
    if not _LINK_SAFE.match(text) or ".." in text.split("/"):
        raise BuildError(f"unsafe link target {text!r}: links may only name files the build wrote")
    return Markup(text)


def yesno(value: bool) -> Markup:
    """A boolean as yes / no."""
    return Markup("yes" if value else "no")


def setting(value: object) -> Markup:
    """A configuration value as the config file would state it."""
    if value is None:
        return Markup("not set")
    if isinstance(value, bool):
        return yesno(value)
    if isinstance(value, float):
        return Markup(f"{value:g}")
    return escape_text(value)


def finalize(value: Any) -> Any:
    """Jinja's `finalize`: escape plain strings, refuse unformatted figures."""
    if isinstance(value, Markup):
        return value
    if value is None:
        raise BuildError("None reached a page; a missing figure must say 'not measured (why)'")
    if isinstance(value, bool):
        return yesno(value)
    if isinstance(value, int):
        return Markup(str(value))
    if isinstance(value, float):
        raise BuildError(f"an unformatted float ({value!r}) reached a page; use a format filter")
    return escape_text(value)


FILTERS: Mapping[str, Callable[..., Markup]] = {
    "md": escape_text,
    "untrusted": untrusted,
    "untrusted_code": untrusted_code,
    "code": code,
    "transcript": transcript,
    "from_code": from_code,
    "json_block": json_block,
    "shell_block": shell_block,
    "num": with_unit,
    "figure": figure,
    "figure_brief": figure_brief,
    "not_measured": not_measured,
    "stat": stat,
    "mean": stat_mean,
    "sd": stat_sd,
    "ci": stat_ci,
    "range": stat_range,
    "ratio": ratio,
    "count": count,
    "score": score,
    "percent": percent,
    "status": status,
    "utc": utc,
    "yesno": yesno,
    "setting": setting,
    "anchor": anchor,
    "release": release,
    "change": change,
    "source": source,
    "link": link,
}
