"""Config files: shipped examples validate, mistakes name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.campaign import server_plans
from collector.config import DeviceSection, load_config
from collector.defaults import embedded_config, quick_profile
from common.errors import ConfigError
from tests.support.engine import SWEEP_LABELS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["shimmy-1.7.0.toml", "llama-server-gpu.toml"])
def test_shipped_configs_validate(name: str) -> None:
    config = load_config(ROOT / "configs" / name)
    assert config.campaign.repeats >= 3
    assert {c.label for c in config.configurations} == {"baseline", "cpu-moe"}
    for model in config.models:
        assert model.path is not None and model.path.is_absolute()


def test_shimmy_config_has_the_three_seed_models() -> None:
    config = load_config(ROOT / "configs" / "shimmy-1.7.0.toml")
    assert [m.label for m in config.models] == ["deepseek-moe-16b", "gpt-oss-20b", "phi-3.5-moe"]
    assert all(m.expected_vram_saved_pct for m in config.models)
    assert config.server.command is not None and config.server.command[0] == "shimmy"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = """
[server]
command = ["llama-server", "-m", "{model_path}"]
[[models]]
label = "m"
path = "m.gguf"
"""


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"campaign\.repeets: unknown key"):
        load_config(_write(tmp_path, "[campaign]\nrepeets = 3\n" + BASE))


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"campaign\.repeats: .*integer"):
        load_config(_write(tmp_path, '[campaign]\nrepeats = "three"\n' + BASE))


def test_nested_list_location(tmp_path: Path) -> None:
    text = BASE + '[[models]]\nlabel = "n"\npath = 3\n'
    with pytest.raises(ConfigError, match=r"models\[1\]\.path"):
        load_config(_write(tmp_path, text))


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[campaign\n"))


def test_unknown_test_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown test 'hello'"):
        load_config(_write(tmp_path, '[campaign]\ntests = ["hello"]\n' + BASE))


def test_attach_needs_endpoint(tmp_path: Path) -> None:
    text = '[server]\nmode = "attach"\n[[models]]\nlabel = "m"\n'
    with pytest.raises(ConfigError, match="endpoint"):
        load_config(_write(tmp_path, text))


def test_duplicate_labels(tmp_path: Path) -> None:
    text = BASE + '[[configurations]]\nlabel = "a"\n[[configurations]]\nlabel = "a"\n'
    with pytest.raises(ConfigError, match="duplicate label 'a'"):
        load_config(_write(tmp_path, text))


def test_default_plan_is_the_protocol() -> None:
    plans = server_plans(embedded_config())
    sweep = [f"n-cpu-moe-{k}" for k in range(0, 31, 5)]
    assert [p.configuration.label for p in plans] == ["baseline", "cpu-moe", *sweep]
    quick = server_plans(quick_profile(embedded_config()))
    assert [p.configuration.label for p in quick] == SWEEP_LABELS
    cells = plans[0].cells
    assert len([c for c in cells if c.stream]) == 9 * 3
    assert len([c for c in cells if not c.stream]) == 9
    # repeats are the outer loop, tests in protocol order inside each
    assert [c.test_id for c in cells[:2]] == ["simple-response", "code-generation"]
    assert cells[9].repeat == 2


def test_quick_profile() -> None:
    config = quick_profile(embedded_config())
    assert config.campaign.repeats == 1 and config.campaign.max_tokens_cap == 32
    assert config.campaign.pause_s == 0
    assert sum(len(p.cells) for p in server_plans(config)) == 2 * (9 + 9) + 4 * 2


def test_sweep_plans(tmp_path: Path) -> None:
    text = BASE + '[sweep]\nn_cpu_moe = [0, 8]\ntests = ["simple-response"]\n'
    plans = server_plans(load_config(_write(tmp_path, text)))
    sweep = [p for p in plans if p.configuration.label.startswith("n-cpu-moe")]
    assert [p.configuration.args for p in sweep] == [[], ["--n-cpu-moe", "8"]]
    assert [p.configuration.n_cpu_moe for p in sweep] == [0, 8]
    assert all(len(p.cells) == 1 for p in sweep)


def test_device_section_rejects_a_device_with_nothing_to_run() -> None:
    with pytest.raises(ValueError, match="launch >= 1 or at least one endpoint"):
        DeviceSection(kind="rpc", launch=0)
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        DeviceSection(kind="rpc", endpoints=["localhost"])
