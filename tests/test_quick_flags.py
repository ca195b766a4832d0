"""`--quick` with `--repeats` or `--pause`: the flags the user typed win.

`--quick` is a profile (1 repeat, 32-token cap, no pauses); `--quick --repeats 3`
asks for that profile with three repeats. It used to give one repeat, silently.
"""

from __future__ import annotations

from collector.collect_request import build_config
from moe_evidence.cli import collect_request, parse


def _config(*flags: str) -> tuple[int, float, int | None, str]:
    config, profile = build_config(collect_request(parse(["collect", *flags])))
    camp = config.campaign
    return camp.repeats, camp.pause_s, camp.max_tokens_cap, profile


def test_quick_alone_is_the_smoke_profile() -> None:
    assert _config("--quick") == (1, 0.0, 32, "quick")


def test_explicit_repeats_and_pause_apply_on_top_of_quick() -> None:
    assert _config("--quick", "--repeats", "3") == (3, 0.0, 32, "quick")
    assert _config("--quick", "--pause", "2.5") == (1, 2.5, 32, "quick")
    assert _config("--pause", "2.5", "--quick", "--repeats", "2") == (2, 2.5, 32, "quick")


def test_without_quick_the_flags_change_only_what_they_name() -> None:
    repeats, pause, cap, profile = _config("--repeats", "2")
    assert (repeats, cap, profile) == (2, None, "default")
    assert pause > 0
