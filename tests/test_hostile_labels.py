"""Labels with control characters in them (issue 23, cases 3, 8 and 9a).

A NUL in a configuration's label was accepted by `collect` and then aborted `build` in
the chart renderer (exit 134, no `error:` line, no site); a newline printed a line that
read like the tool's own (`nox > collect --resume --db /etc/passwd`); U+202E reached
the chart legends raw and reversed them. Now a config or a flag with one is refused in
one line naming the key, every printed line stays one line, and the build shows any
such text a store already holds (older versions wrote it; a merge can bring it).
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from collector.collect_request import build_config
from collector.config import load_config
from collector.progress import CampaignProgress
from common.errors import ConfigError
from evidence.store import open_store
from moe_evidence.cli import collect_request, main, parse
from tests.support.cli import cli_env, moe_evidence
from tests.support.report import build, project, synthetic_store
from tests.support.stores import StoreFactory

ROOT = Path(__file__).resolve().parents[1]
FORGED = "nox > collect --resume --db /etc/passwd"
# NUL, newline and a right-to-left override: each in a label the store already holds.
HOSTILE = "base\x00li\nne\u202eevil"
# Raw in an SVG, each either aborts the renderer or draws something else than is stored.
_RAW_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)

CONFIG = """
[campaign]
name = {name}
[server]
command = ["llama-server", "-m", "{{model_path}}"]
[[models]]
label = {model}
path = "m.gguf"
[[configurations]]
label = {configuration}
"""


def _config(tmp_path: Path, **labels: str) -> Path:
    values = {"name": '"c"', "model": '"m"', "configuration": '"baseline"'}
    values.update(labels)
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(**values), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("key", "escaped", "code"),
    [
        ("configuration", r'"base\u0000line"', "U+0000"),
        ("configuration", r'"base\nnox > collect"', "U+000A"),
        ("configuration", r'"base\u202Eenil"', "U+202E"),
        ("model", r'"m\u0085"', "U+0085"),
        ("name", r'"c\u001b[2J"', "U+001B"),
    ],
)
def test_a_label_with_a_control_character_is_refused_in_one_line(
    tmp_path: Path, key: str, escaped: str, code: str
) -> None:
    """Regression: each was accepted, and the NUL one aborted the build later."""
    path = _config(tmp_path, **{key: escaped})
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    where = {"configuration": "configurations[0].label", "model": "models[0].label"}
    assert message.startswith(
        f"{path}: {where.get(key, 'campaign.name')}: contains a control character ({code}); "
    ), message
    assert len(message.splitlines()) == 1 and "remove it" in message


@pytest.mark.parametrize("flag", ["--label", "--model", "--release"])
def test_a_label_flag_with_a_newline_is_refused_naming_the_flag(flag: str) -> None:
    """Regression: `--label` and `--model` (attach) and `--release` took any text."""
    request = collect_request(
        parse(["collect", "--endpoint", "http://127.0.0.1:9", "--model", "m", flag, f"a\n{FORGED}"])
    )
    with pytest.raises(ConfigError, match=rf"^{flag}: contains a control character \(U\+000A\)"):
        build_config(request)


def test_an_endpoint_with_a_newline_is_refused() -> None:
    """urlsplit drops a newline silently, so the address passed the check and went on,
    newline and all, into the campaign's name and the store."""
    request = collect_request(
        parse(["collect", "--endpoint", f"http://127.0.0.1:9/\n{FORGED}", "--model", "m"])
    )
    with pytest.raises(
        ConfigError, match=r"^--endpoint .* contains a control character \(U\+000A\)"
    ):
        build_config(request)


def test_the_error_line_stays_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The one `error:` line quotes what it is given (here a --db path): a newline in it
    printed a second line that read like the tool's own."""
    assert main(["campaigns", "--db", str(tmp_path / f"x\n{FORGED}")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no evidence store"), err
    assert f"\\n{FORGED}" in err


def test_the_campaigns_listing_prints_one_line_per_campaign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A campaign's name with a newline (stored by an older version, or merged in) no
    longer starts a line of its own in `moe-evidence campaigns`."""
    db = tmp_path / "evidence.duckdb"
    with open_store(db) as con:
        factory = StoreFactory(con).campaign()
        con.execute("UPDATE campaigns SET name = ?", [f"mine\n{FORGED}\u202e"])
    assert main(["campaigns", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(factory.campaign_id), out
    assert f"mine\\n{FORGED}\\u202e" in out


def test_progress_lines_escape_a_newline_in_a_label(capsys: pytest.CaptureFixture[str]) -> None:
    """The collector's progress, plain (a log) and live (a terminal): a label with a
    newline stays on its line."""
    label = f"cpu-moe\n{FORGED}"
    with CampaignProgress(console=Console(file=io.StringIO())) as progress:
        progress.server("m", label, "starting server")
        progress.message(f"[m / {label}] failed: boom")
    assert capsys.readouterr().err.splitlines() == [
        f"[m / cpu-moe\\n{FORGED}] starting server",
        f"[m / cpu-moe\\n{FORGED}] failed: boom",
    ]

    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=200, color_system=None)
    with CampaignProgress(console=console) as progress:
        progress.server("m", label, "starting server")
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    assert not any(line.lstrip().startswith(FORGED) for line in shown.splitlines()), shown
    assert f"cpu-moe\\n{FORGED}" in shown


@pytest.fixture(scope="module")
def hostile_site(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`moe-evidence build` over a store whose configuration label holds NUL, newline and
    U+202E, in a process of its own: the chart renderer's abort would end this one."""
    tmp = tmp_path_factory.mktemp("hostile")
    db = tmp / "hostile.duckdb"
    synthetic_store(db)
    with duckdb.connect(str(db)) as con:
        con.execute(
            "UPDATE server_runs SET config_label = ? WHERE config_label = 'cpu-moe'", [HOSTILE]
        )
    root = project(tmp)
    env = {**cli_env(), "PYTHONPATH": str(ROOT)}
    done = moe_evidence("build", "--db", str(db), "--root", str(root), timeout=300, env=env)
    return done, root


def test_a_stored_label_with_control_characters_builds(
    hostile_site: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Regression: exit 134, `thread caused non-unwinding panic. aborting.`, no site."""
    done, root = hostile_site
    assert done.returncode == 0, done.stderr[-2000:]
    assert (root / "site" / "index.html").is_file()


def test_charts_show_the_label_s_controls_and_draw_none(
    hostile_site: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Legends, colour domains, facet headers and titles carry the label shown, never raw
    (the chart data alone was shown before: the legend's domain drew U+202E applied)."""
    done, root = hostile_site
    assert done.returncode == 0, done.stderr[-2000:]
    charts = root / "docs" / "assets" / "charts"
    svgs = sorted(charts.glob("*.svg"))
    assert svgs
    shown = "base\u2400li\u240ane\u2039U+202E\u203aevil"
    for svg in svgs:
        text = svg.read_text(encoding="utf-8")
        assert not _RAW_CONTROL.search(text), svg.name
    legend = (charts / "perf-decode-tps.svg").read_text(encoding="utf-8")
    assert f">{shown}</text>" in legend


def test_pages_show_the_label_s_controls(
    hostile_site: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, root = hostile_site
    assert done.returncode == 0, done.stderr[-2000:]
    page = (root / "docs" / "performance.md").read_text(encoding="utf-8")
    assert "base\u2400li ne\u2039U+202E\u203aevil" in page
    assert "\x00" not in page and "\u202e" not in page


def test_a_right_to_left_override_is_shown_in_chart_legends(tmp_path: Path) -> None:
    """Case 9a alone (no NUL, so the old build finished): the chart data showed U+202E,
    but the colour scale's domain took the raw label, so every legend (its text and its
    aria-label) drew it applied."""
    db = tmp_path / "rtl.duckdb"
    synthetic_store(db)
    with duckdb.connect(str(db)) as con:
        con.execute(
            "UPDATE server_runs SET config_label = 'cpu\u202eeom' WHERE config_label = 'cpu-moe'"
        )
    root = project(tmp_path)
    build(db, root, run_mkdocs=False)
    charts = root / "docs" / "assets" / "charts"
    for svg in sorted(charts.glob("*.svg")):
        assert "\u202e" not in svg.read_text(encoding="utf-8"), svg.name
    legend = (charts / "perf-decode-tps.svg").read_text(encoding="utf-8")
    assert "2 values: baseline, cpu\u2039U+202E\u203aeom" in legend
