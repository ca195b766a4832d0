"""Each server API is one declaration (common.server_apis) with one adapter
(collector.apis): everything that differs between APIs is asked of them, so a
new API is selectable everywhere once it is declared and adapted."""

from __future__ import annotations

import argparse

import pytest

from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from calibration.shapes import SHAPES
from collector.apis import ADAPTERS, GenerationParams, adapter
from collector.client import Timeouts, generate
from collector.config import ServerSection
from common.server_apis import API_NAMES, SERVER_APIS, server_api, without_finish_reason
from evidence.metrics import METRICS
from moe_evidence.cli import parser


def _api_choices() -> list[str]:
    collect = next(
        a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["collect"]
    (api,) = (a for a in collect._actions if "--api" in a.option_strings)
    return list(api.choices or [])


def test_every_declared_api_has_one_adapter_and_calibration_shapes() -> None:
    assert list(ADAPTERS) == list(API_NAMES) == [a.name for a in SERVER_APIS]
    assert all(adapter(name).api is server_api(name) for name in API_NAMES)
    assert set(SHAPES) == set(API_NAMES)
    paths = [a.path for a in SERVER_APIS]
    assert len(set(paths)) == len(paths)


def test_the_cli_and_the_config_offer_exactly_the_declared_apis() -> None:
    assert _api_choices() == list(API_NAMES)
    for name in API_NAMES:
        assert ServerSection(mode="attach", endpoint="http://x:1", api=name).api == name
    with pytest.raises(ValueError, match="Input should be 'openai-chat', 'openai-completions'"):
        ServerSection(mode="attach", endpoint="http://x:1", api="openai")
    with pytest.raises(ValueError, match="Input should be"):
        adapter("openai")


def test_the_finish_reason_metric_asks_the_declarations() -> None:
    silent = [a.name for a in SERVER_APIS if not a.reports_finish_reason]
    assert silent, "Shimmy's native API never gives a finish reason"
    metric = METRICS["finish_reason_inferred"]
    assert metric.sql.count(without_finish_reason("r.api")) == 2
    for name in silent:
        assert f"'{name}'" in metric.sql
    assert (
        without_finish_reason("r.api") == "r.api IN (" + ", ".join(f"'{n}'" for n in silent) + ")"
    )


@pytest.mark.parametrize("api", API_NAMES)
@pytest.mark.parametrize("stream", [True, False])
def test_each_api_is_asked_at_its_declared_path(api: str, stream: bool) -> None:
    params = GenerationParams("one two three", 8, 0.0, 1, stream, "calibration")
    with CalibratedServer(Scenario(tokens=8, gap_s=0.001)) as server:
        result = generate(server.base_url, api, params, timeouts=Timeouts(2.0, 2.0, 10.0))
        record = server.last()
    assert (result.status, result.error) == ("ok", None)
    assert record.path == server_api(api).path
    assert record.request == adapter(api).request_body(params)
    assert result.output_text == Scenario(tokens=8).text()
