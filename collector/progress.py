"""What the user sees while a campaign runs.

The live display is redrawn by hand, at most twice a second, and never from a
background thread: a refresh thread would compete with the streaming client
for the GIL and blur the token timestamps being measured.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from common.controls import one_line
from common.secrets import Secrets

REDRAW_S = 0.5


def visible(text: str) -> str:
    """`text` as one line with every control character shown as its escape (`\\n`,
    `\\x1b`, `\\u202e`): a label or a server's error can neither start a line that reads
    like the tool's own, nor act on the terminal (common.controls)."""
    return one_line(text)


@dataclass
class _State:
    model: str = ""
    config: str = ""
    test: str = ""
    repeat: int = 0
    repeats: int = 0
    stream: bool = True
    done: int = 0
    total: int = 0
    tokens: int = 0
    first_ns: int = 0
    last_ns: int = 0
    note: str = ""


class CampaignProgress:
    """Rich live progress on a terminal, plain lines otherwise.

    Every line it prints, and every cell of the live table, has the campaign's
    `secrets` replaced (a 401 body or a server's last log line can echo a key) and
    is shown as text: never as Rich markup (a `[/x]` in an error body would abort
    the campaign), never as terminal control sequences a server sent."""

    def __init__(self, console: Console | None = None, secrets: Secrets | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.secrets = secrets or Secrets()
        self.state = _State()
        self._live: Live | None = None
        self._last_draw = 0.0

    def __enter__(self) -> CampaignProgress:
        if self.console.is_terminal:
            self._live = Live(
                self._render(), console=self.console, auto_refresh=False, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def message(self, text: str, cut: bool = False) -> None:
        """Print one line (`cut`: it may end inside a secret, being cut short)."""
        line = self._shown(text, cut)
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def _shown(self, text: str, cut: bool = False) -> str:
        return visible(self.secrets.text(text, cut=cut))

    def plan(self, total: int) -> None:
        self.state.total = total

    def server(self, model: str, config: str, note: str) -> None:
        self.state.model, self.state.config, self.state.note = model, config, note
        self.message(f"[{model} / {config}] {note}")
        self._draw(force=True)

    def request(self, test: str, repeat: int, repeats: int, stream: bool) -> None:
        s = self.state
        s.test, s.repeat, s.repeats, s.stream = test, repeat, repeats, stream
        s.tokens, s.first_ns, s.last_ns = 0, 0, 0
        s.note = ""
        self._draw(force=True)

    def on_content(self, reads: int, t_ns: int) -> None:
        s = self.state
        if s.first_ns == 0:
            s.first_ns = t_ns
        s.tokens, s.last_ns = reads, t_ns
        self._draw()

    def finished(self, status: str, summary: str) -> None:
        self.state.done += 1
        line = (
            f"  {self.state.test:<24} r{self.state.repeat} "
            f"{'stream' if self.state.stream else 'no-stream':<9} {status:<12} {summary}"
        )
        # The summary of a failed request is its error cut at a fixed length: it may
        # end inside a key.
        self.message(line, cut=True)
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if self._live is None:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_S:
            return
        self._last_draw = now
        self._live.update(self._render(), refresh=True)

    def _render(self) -> Table:
        s = self.state
        rate = ""
        if s.tokens > 1 and s.last_ns > s.first_ns:
            # One read per token on a token-by-token stream: a live estimate only;
            # the stored figures come from the decoded events.
            rate = f"~{(s.tokens - 1) / ((s.last_ns - s.first_ns) / 1e9):.1f} tok/s"
        table = Table.grid(padding=(0, 2))
        table.add_row(
            Text.assemble((self._shown(s.model), "bold"), " / ", (self._shown(s.config), "cyan")),
            Text(
                self._shown(f"{s.test} r{s.repeat}/{s.repeats} ")
                + ("stream" if s.stream else "no-stream")
            ),
            f"{s.tokens} reads {rate}",
            f"{s.done}/{s.total} requests",
            Text(self._shown(s.note)),
        )
        return table
