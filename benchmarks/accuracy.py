"""Timing accuracy and CPU cost of the collector's client, against the calibrated server.

Definitions (all stamps are `perf_counter_ns`, CLOCK_MONOTONIC, one clock for
both processes):

* chunk arrival error: for every event of a stream, the collector's arrival
  stamp (taken as the network read that completed the event returned) minus
  the server's send stamp (taken as the write that carried it returned). It
  is what the collector adds to every per-token time: loopback delivery plus
  the wait for the client to be scheduled and read.
* TTFT error: the collector's TTFT (first content arrival - its send stamp)
  minus the true one, which is the server's first content write - the same
  send stamp. It is the first content event's arrival error, after the
  server has been silent through the whole prompt phase.
* request delivery (reference): the collector's send stamp to the server
  having read the request (client set-up, connect, send, server parse). It is
  part of both TTFT figures, so not an error, but it bounds how much of a
  server's TTFT is HTTP overhead rather than prompt processing.
* collector CPU: the process CPU time (user + system, every thread) spent in
  `collector.client.generate` with the campaign's progress callback, over its
  wall time, while the server streams 1,000 events/s: 100 % = one core.
"""

from __future__ import annotations

import io
import json
import time

import psutil
from rich.console import Console

from benchmarks.calibrated import PARAMS, calibrated_server
from benchmarks.results import Measurement, judged, percentile, reference
from calibration.scenario import Scenario, StreamRecord
from collector.apis import decode_event
from collector.client import RequestResult, Timeouts, generate
from collector.progress import CampaignProgress
from collector.sse import SSEParser

TIMEOUTS = Timeouts(connect_s=5.0, stall_s=10.0, request_s=120.0)
MS = 1e6  # ns


def _paired(result: RequestResult, sent_ns: list[int]) -> list[int] | None:
    """Arrival minus send stamp per event; None when the event counts differ."""
    if result.status != "ok" or len(result.chunk_t_ns) != len(sent_ns):
        return None
    return [a - s for a, s in zip(result.chunk_t_ns, sent_ns, strict=True)]


def _first_content_sent(record: StreamRecord) -> int | None:
    return next((e.sent_ns for e in record.events if e.kind == "content"), None)


def measure_accuracy(quick: bool) -> list[Measurement]:
    """TTFT and per-chunk arrival error over many ~500 events/s streams.

    Long streams give the per-chunk errors; TTFT gets short streams too, enough
    of them that its p99 is a percentile rather than the single worst request
    (40 requests alone would make p99 their maximum)."""
    requests = 10 if quick else 40
    short_requests = 50 if quick else 260
    scenario = Scenario(
        tokens=100 if quick else 150,
        first_token_delay_s=0.02,
        gap_s=0.002,
        jitter_s=0.001,
        seed=1,
    )
    short = Scenario(tokens=4, first_token_delay_s=0.02, gap_s=0.002, jitter_s=0.001, seed=2)
    chunk_errors: list[int] = []
    ttft_errors: list[int] = []
    delivery: list[int] = []
    unpaired = 0
    for stream, count in ((scenario, requests), (short, short_requests)):
        with calibrated_server(stream) as server:
            generate(server.base_url, "openai-chat", PARAMS, timeouts=TIMEOUTS)  # warm-up
            for _ in range(count):
                result = generate(server.base_url, "openai-chat", PARAMS, timeouts=TIMEOUTS)
                record = server.last()
                errors = _paired(result, record.sent_ns)
                first_sent = _first_content_sent(record)
                if errors is None or result.first_token_ns is None or first_sent is None:
                    unpaired += 1
                    continue
                if stream is scenario:
                    chunk_errors += errors
                client_ttft = result.first_token_ns - result.sent_ns
                ttft_errors.append(client_ttft - (first_sent - result.sent_ns))
                delivery.append(record.received_ns - result.sent_ns)
    if not chunk_errors:
        raise RuntimeError(f"no request could be paired with the server's stamps ({unpaired})")
    chunks = [e / MS for e in chunk_errors]
    ttft = [e / MS for e in ttft_errors]
    sent = [d / MS for d in delivery]
    common = {
        "requests": len(ttft),
        "unpaired_requests": unpaired,
        "events": len(chunks),
        "scenario": scenario.to_dict(),
        "short_scenario": short.to_dict(),
    }
    per_request = {
        **common,
        "note": f"n={len(ttft)} requests ({requests} long, {short_requests} short streams)",
    }
    per_event = {**common, "note": f"n={len(chunks)} events"}
    target = "p99 < 1 ms"
    return [
        reference("TTFT error p50", percentile(ttft, 50), "ms", **per_request),
        judged(
            "TTFT error p99", percentile(ttft, 99), "ms", target, lambda v: v < 1.0, **per_request
        ),
        reference("TTFT error max", max(ttft), "ms", **per_request),
        reference("chunk arrival error p50", percentile(chunks, 50), "ms", **per_event),
        judged(
            "chunk arrival error p99",
            percentile(chunks, 99),
            "ms",
            target,
            lambda v: v < 1.0,
            **per_event,
        ),
        reference("chunk arrival error max", max(chunks), "ms", **per_event),
        reference("request delivery p50", percentile(sent, 50), "ms", **per_request),
        reference("request delivery p99", percentile(sent, 99), "ms", **per_request),
    ]


def measure_collector_cpu(quick: bool) -> list[Measurement]:
    """The collector's CPU while it receives a 1,000 events/s stream (~10 s)."""
    seconds = 3 if quick else 10
    # spin 0: the server sleeps to each deadline instead of spinning, so on a
    # small machine it does not take the core the collector is measured on.
    scenario = Scenario(tokens=1000 * seconds, first_token_delay_s=0.05, gap_s=0.001)
    progress = CampaignProgress(Console(file=io.StringIO()))
    with calibrated_server(scenario, spin_us=0) as server:
        generate(server.base_url, "openai-chat", PARAMS, timeouts=TIMEOUTS)  # warm-up
        me = psutil.Process()
        split0 = me.cpu_times()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = generate(
            server.base_url,
            "openai-chat",
            PARAMS,
            timeouts=TIMEOUTS,
            on_content=progress.on_content,
        )
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        split1 = me.cpu_times()
    if result.status != "ok":
        raise RuntimeError(f"the 1,000 events/s stream failed: {result.error}")
    content = [
        t for t, k in zip(result.chunk_t_ns, result.chunk_kind, strict=True) if k == "content"
    ]
    rate = (len(content) - 1) / ((content[-1] - content[0]) / 1e9)
    pct = 100 * cpu / wall
    parse_us = _parse_cost_us(scenario.event_texts())
    return [
        judged(
            "collector CPU at 1,000 events/s",
            pct,
            "% of one core",
            "< 5 % of one core",
            lambda v: v < 5.0,
            events=len(result.chunk_t_ns),
            events_per_s=rate,
            cpu_s=cpu,
            wall_s=wall,
            cpu_us_per_event=1e6 * cpu / len(result.chunk_t_ns),
            user_s=split1.user - split0.user,
            system_s=split1.system - split0.system,
            note=f"{rate:,.0f} events/s received for {wall:.1f} s",
        ),
        reference(
            "collector parsing at 1,000 events/s",
            parse_us * 1000 / 1e4,
            "% of one core",
            us_per_event=parse_us,
            note="SSE parse + event decode alone, on the same events: the rest is HTTP",
        ),
    ]


def _parse_cost_us(events: list[str]) -> float:
    """CPU microseconds per event of the collector's own stream code (SSE parsing
    and event decoding), replayed on llama-server-shaped events off the network."""
    wire = [
        b"data: "
        + json.dumps(
            {
                "object": "chat.completion.chunk",
                "model": "calibration",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            },
            separators=(",", ":"),
        ).encode()
        + b"\n\n"
        for text in events
    ]
    parser = SSEParser()
    started = time.process_time()
    for data in wire:
        for event in parser.feed(data):
            decode_event("openai-chat", event.data)
    return 1e6 * (time.process_time() - started) / len(wire)
