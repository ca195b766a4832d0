"""`moe-evidence advise --db STORE`: predicted decode and prefill tokens/s per K from a
speed calibration in the store (a campaign of the same model file on this host and
device whose probes ran at K = 0 and K = all), the fastest K that fits, and the one
line that says how to get a calibration where the store has none."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from benchmarks.random_moe import MoeShape, write_random_moe
from collector.advisor import ProbeEnds, SpeedCalibration, advise
from collector.gguf_inspect import inspect_model
from collector.inventory import collect_host
from common.sizes import MIB
from evidence.store import open_store
from moe_evidence.cli import main
from tests.support.curve import Rates, curve_store
from tests.support.stores import StoreFactory

SHAPE = MoeShape(
    layers=4, embd=256, heads=4, kv_heads=2, ff=256, experts=8, experts_used=2, vocab=1024,
    context=2048,
)  # fmt: skip
ALL = SHAPE.layers  # K with every expert in CPU memory (= --cpu-moe)
SHORT, LONG = 16, 64  # the probes' prompt lengths, in tokens
RPC = {"kind": "rpc", "rpc_servers": [{"endpoint": "127.0.0.1:50052", "launched": True}]}


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_moe(tmp_path_factory.mktemp("advise-speed") / "tiny-moe.gguf", SHAPE)


@pytest.fixture(scope="module")
def spec(moe: Path) -> dict[str, Any]:
    return inspect_model(moe).to_json()


@pytest.fixture(scope="module")
def args(moe: Path, spec: dict[str, Any]) -> tuple[str, ...]:
    """An RPC device on which K = 1 and above fit (with a 1 MiB margin), K = 0 does not."""
    sizes = [r.device_bytes for r in advise(spec, 1 << 40, device="rpc", n_ctx=512).rows]
    memory = sizes[1] + MIB
    assert sizes[0] + MIB > memory
    return ("--model", str(moe), "--device", "rpc", "--ctx", "512", "--margin", "1MiB",
            "--device-memory", str(memory))  # fmt: skip


def _curve(
    decode_none: float, decode_all: float, prefill_none: float, prefill_all: float
) -> dict[int, Rates]:
    """Probes at K = 0, 2 and all. Decode after the short prompt and prefill of the long
    one go from the `_none` rate to the `_all` rate; the other probe of each measure
    moves the other way, so a calibration read from the wrong probe shows."""
    ends = {
        0: {(SHORT, "decode"): decode_none, (LONG, "prefill"): prefill_none,
            (LONG, "decode"): 10.0, (SHORT, "prefill"): 100.0},
        ALL: {(SHORT, "decode"): decode_all, (LONG, "prefill"): prefill_all,
              (LONG, "decode"): 25.0, (SHORT, "prefill"): 40.0},
    }  # fmt: skip
    # A point between the ends, off the model's line: the prediction must not read it.
    middle = {key: 1.0 for key in ends[0]}
    return {
        k: {key: [rate] for key, rate in rates.items()}
        for k, rates in {0: ends[0], 2: middle, ALL: ends[ALL]}.items()
    }


def _store(
    path: Path,
    spec: Mapping[str, Any],
    points: Mapping[int, Rates] | None,
    *,
    sha256: str | None = None,
    host_id: str | None = None,
    device: Mapping[str, Any] | None = RPC,
) -> tuple[Path, str]:
    """A store with one complete campaign of the model (`sha256`, default: the file's)
    on `host_id` (default: this host, as the collector identifies it) and `device`,
    with the speed probes of `points` (None: a baseline run without probes); the store's
    path and the campaign's id."""
    with open_store(path) as con:
        store = StoreFactory(con, host_id=host_id or collect_host().host_id).campaign()
        if points is None:
            store.server_run("baseline")
        else:
            curve_store(store, points, spec)
        con.execute(
            "UPDATE models SET sha256 = ?, spec = ? WHERE model_id = ?",
            [sha256 or spec["sha256"], json.dumps(spec), store.model_id],
        )
        con.execute("UPDATE server_runs SET device = ?", [json.dumps(device)])
    return path, store.campaign_id


def _advise(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["advise", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _by_hand(spec: Mapping[str, Any], k: int, rate_none: float, rate_all: float) -> float:
    """The speed model written out: the time per token moves from its K = 0 value to its
    K = all value with the share of the expert bytes in CPU memory at K."""
    on_cpu: int = sum(size for block, size in spec["expert_bytes_by_layer"] if block < k)
    share = on_cpu / int(spec["expert_tensor_bytes"])
    return 1 / (1 / rate_none + share * (1 / rate_all - 1 / rate_none))


@pytest.mark.parametrize(
    ("decode", "fastest"),
    [
        ((20.0, 8.0), 1),  # decode falls with K: the fewest experts that fit
        ((8.0, 20.0), ALL),  # the host decodes faster: every expert in CPU memory
    ],
)
def test_with_a_calibration_each_k_gets_its_speed_and_the_fastest_fitting_k_wins(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spec: dict[str, Any],
    args: tuple[str, ...],
    decode: tuple[float, float],
    fastest: int,
) -> None:
    prefill = (80.0, 40.0)
    db, campaign_id = _store(tmp_path / "curve.duckdb", spec, _curve(*decode, *prefill))
    code, out, _ = _advise(capsys, *args, "--db", str(db), "--json")
    assert code == 0
    document = json.loads(out)
    rows = document["rows"]
    assert [r["fits"] for r in rows] == [False, True, True, True, True]
    for k in (1, 2, ALL):
        assert rows[k]["decode_tps"] == pytest.approx(_by_hand(spec, k, *decode), rel=1e-9)
        assert rows[k]["prefill_tps"] == pytest.approx(_by_hand(spec, k, *prefill), rel=1e-9)
    assert document["recommended_k"] == fastest
    assert rows[fastest]["decode_tps"] == max(r["decode_tps"] for r in rows if r["fits"])
    calibration = document["speed_calibration"]
    assert calibration["store"] == str(db) and calibration["campaign_id"] == campaign_id
    assert calibration["decode"]["probe"] == f"prefill-{SHORT}"
    assert calibration["prefill"]["probe"] == f"prefill-{LONG}"
    assert calibration["decode"]["seconds_per_token_k0"] == pytest.approx(1 / decode[0])
    assert document["speed_note"] is None

    code, table, _ = _advise(capsys, *args, "--db", str(db))
    assert code == 0
    assert f"speed: predicted from campaign {campaign_id} " in table
    assert f"decode after the {SHORT}-token probe prompt (prefill-{SHORT})" in table
    assert f"prefill of the {LONG}-token probe prompt (prefill-{LONG})" in table
    line = next(x for x in table.splitlines() if x.split()[:1] == ["2"])
    assert f"{rows[2]['decode_tps']:.1f}  " in line and f"{rows[2]['prefill_tps']:.1f}  " in line
    assert (
        f"recommended: K = {fastest}, the fastest that fits: "
        f"{rows[fastest]['decode_tps']:.1f} decode and {rows[fastest]['prefill_tps']:.1f} "
        f"prefill tokens/s predicted"
    ) in table


def test_the_newest_complete_campaign_is_the_calibration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: dict[str, Any], args: tuple[str, ...]
) -> None:
    db = tmp_path / "three.duckdb"
    _store(db, spec, _curve(20.0, 8.0, 80.0, 40.0))
    _, newest = _store(db, spec, _curve(8.0, 20.0, 80.0, 40.0))
    _, unfinished = _store(db, spec, _curve(20.0, 8.0, 80.0, 40.0))
    with duckdb.connect(str(db)) as con:
        con.execute(
            "UPDATE campaigns SET status = 'interrupted' WHERE campaign_id = ?", [unfinished]
        )
    code, out, _ = _advise(capsys, *args, "--db", str(db), "--json")
    document = json.loads(out)
    assert code == 0 and document["speed_calibration"]["campaign_id"] == newest
    assert document["recommended_k"] == ALL


def test_on_a_tie_the_smaller_k_wins(spec: dict[str, Any]) -> None:
    flat = ProbeEnds("prefill-16", 16.0, 0.1, 0.1)
    speed = SpeedCalibration("s.duckdb", "c", datetime.now(UTC), "rpc", flat, flat)
    sizes = [r.device_bytes for r in advise(spec, 1 << 40, device="rpc", n_ctx=512).rows]
    advice = advise(spec, sizes[2] + MIB, device="rpc", n_ctx=512, margin=MIB, speed=speed)
    assert [r.decode_tps for r in advice.rows] == [pytest.approx(10.0)] * (ALL + 1)
    assert advice.recommended_k == 2 and advice.by_speed


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("no probes", "its campaign of this model here ran no speed probe at both ends"),
        ("another model", "no complete campaign in it ran this model file"),
        ("another host", "its campaign of this model ran on another host"),
        ("a GPU", "its campaign of this model on this host ran on the GPU"),
        ("the CPU only", "its campaign of this model on this host ran on the CPU only"),
    ],
)
def test_without_a_calibration_one_line_says_how_to_get_one_and_the_advice_stays(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spec: dict[str, Any],
    args: tuple[str, ...],
    case: str,
    why: str,
) -> None:
    points = _curve(20.0, 8.0, 80.0, 40.0)
    path = tmp_path / "store.duckdb"
    if case == "no probes":
        db, _ = _store(path, spec, None)
    elif case == "another model":
        db, _ = _store(path, spec, points, sha256="0" * 64)
    elif case == "another host":
        db, _ = _store(path, spec, points, host_id="elsewhere")
    else:  # its host lists a GPU and its runs had no RPC device: they ran on the GPU,
        # unless their loader logs put nothing on a device (an engine built for the CPU)
        gpu = [{"index": 0, "name": "NVIDIA H100", "memory_bytes": 80 << 30, "uuid_hash": "x"}]
        db, _ = _store(path, spec, points, device=None)
        with duckdb.connect(str(db)) as con:
            con.execute("UPDATE hosts SET gpu_status = 'ok', gpus = ?", [json.dumps(gpu)])
            if case == "the CPU only":
                con.execute("UPDATE server_runs SET log_summary = '{\"gpu_total_mib\": null}'")

    _, memory_only, _ = _advise(capsys, *args)
    code, table, err = _advise(capsys, *args, "--db", str(db))
    assert code == 0 and not err
    (note,) = [x for x in table.splitlines() if x.startswith("no speed calibration")]
    assert note.startswith(
        f"no speed calibration for {spec['name']} on this host's RPC device in {db} ({why}"
    )
    assert note.endswith(
        "): run `nox -s collect` (the default campaign sweeps K with speed probes) or a "
        "campaign of this model with [sweep] prompt_tokens = [...]; speed columns left out"
    )
    assert table.replace(note + "\n", "") == memory_only
    assert "recommended: K = 1, the fewest experts in CPU memory that fit" in table

    _, plain, _ = _advise(capsys, *args, "--json")
    code, out, _ = _advise(capsys, *args, "--db", str(db), "--json")
    document = json.loads(out)
    assert code == 0 and document["speed_calibration"] is None
    assert document["speed_note"] == note
    assert all(r["decode_tps"] is None and r["prefill_tps"] is None for r in document["rows"])
    assert {**document, "speed_note": None} == json.loads(plain)
    if case == "a GPU":  # advised for the GPU, the same store has its calibration
        _, out, _ = _advise(capsys, *args, "--device", "gpu", "--db", str(db), "--json")
        assert json.loads(out)["speed_calibration"]["device"] == "gpu"


@pytest.mark.parametrize(
    ("store", "said"),
    [
        ("missing.duckdb", "no evidence store at"),
        ("notes.duckdb", "pass another file with --db"),
        ("empty.duckdb", "is a DuckDB file without an evidence store in it"),
    ],
)
def test_a_store_that_is_not_one_is_a_one_line_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    store: str,
    said: str,
) -> None:
    db = tmp_path / store
    if store == "notes.duckdb":
        db.write_text("not a store\n")
    elif store == "empty.duckdb":
        duckdb.connect(str(db)).close()
    for extra in ((), ("--json",)):
        code, out, err = _advise(capsys, *args, "--db", str(db), *extra)
        assert code == 1 and not out
        assert err.count("\n") == 1 and err.startswith("error: ") and said in err, err
        assert str(db) in err
