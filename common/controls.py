"""Control characters in the user's text (labels, names, errors a server sent).

One definition for every place that shows such text: the config check refuses them in
labels, the console prints them as escapes, the site draws them as visible marks.

What counts, and why each:
- C0 controls (newline and tab included), DEL and C1 controls: a terminal acts on them
  (a newline starts a line that reads like the tool's own, ESC starts colour, cursor and
  title sequences), and those XML cannot hold make the chart renderer abort the build.
- The bidirectional embeddings, overrides, isolates and marks (U+202E and kin): they
  reorder the text after them, so a label could read differently from what is stored.
- U+FFFE and U+FFFF: not controls, but XML cannot hold them either (the renderer aborts).
"""

from __future__ import annotations

import re

BIDI_CONTROLS: tuple[int, ...] = (
    0x061C,
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
)
NONCHARACTERS: tuple[int, ...] = (0xFFFE, 0xFFFF)
# Every code point above, in order.
UNSHOWABLE: tuple[int, ...] = (
    *range(0x20),
    *range(0x7F, 0xA0),
    *BIDI_CONTROLS,
    *NONCHARACTERS,
)

_UNSHOWABLE = re.compile("[" + "".join(re.escape(chr(c)) for c in UNSHOWABLE) + "]")
# What the console escapes: all of the above but tab, which moves the cursor only forward.
_CONSOLE = re.compile("[" + "".join(re.escape(chr(c)) for c in UNSHOWABLE if c != 0x09) + "]")


def control_problem(text: str) -> str | None:
    """What is wrong with `text` as a label, a name or an address, or None: the first
    character it may not hold, by code point and position."""
    found = _UNSHOWABLE.search(text)
    if found is None:
        return None
    code = ord(found.group(0))
    kind = "a noncharacter" if code in NONCHARACTERS else "a control character"
    return (
        f"contains {kind} (U+{code:04X}); remove it (character {found.start() + 1}: the "
        f"text is printed on the console and shown in pages and charts)"
    )


def one_line(text: str) -> str:
    """`text` as one printable line: every character of UNSHOWABLE but tab shown as its
    escape (`\\n`, `\\x1b`, `\\u202e`), so it can neither start a line nor act on the
    terminal."""
    return _CONSOLE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)
