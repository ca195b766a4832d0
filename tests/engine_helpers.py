"""What the tests on the real engine share: the server command, and a progress
display that kills a process at a chosen moment of a stream (fault injection)."""

from __future__ import annotations

import psutil

from collector.defaults import LLAMA_SERVER_COMMAND
from collector.engine import EngineBuild
from collector.progress import CampaignProgress

# Every configuration of the embedded sweep, in plan order.
SWEEP_LABELS = [
    "baseline",
    "cpu-moe",
    "n-cpu-moe-0",
    "n-cpu-moe-10",
    "n-cpu-moe-20",
    "n-cpu-moe-30",
]


def server_command(engine: EngineBuild, *extra: str) -> list[str]:
    """The embedded llama-server command with the engine's binary filled in."""
    return [
        engine.server.as_posix() if part == "{llama_server}" else part
        for part in (*LLAMA_SERVER_COMMAND, *extra)
    ]


class KillOnce(CampaignProgress):
    """Kills the (first) child process whose name contains `name` after the
    `after`-th network read of a stream, once."""

    def __init__(self, name: str, after: int = 8) -> None:
        super().__init__()
        self.name, self.after = name, after
        self.killed_pid: int | None = None

    def on_content(self, tokens: int, t_ns: int) -> None:
        super().on_content(tokens, t_ns)
        if self.killed_pid is None and tokens == self.after:
            for child in psutil.Process().children(recursive=True):
                if self.name in child.name():
                    self.killed_pid = child.pid
                    child.kill()
                    return
