"""Build small evidence stores by hand: hand-made timelines for metric tests.

Only for tests that need exact, known inputs (a 3-token request with a
multi-token chunk, say). The integration tests use real campaigns instead.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

from evidence.writer import chunk_table, insert_arrow, insert_row, to_json

MS = 1_000_000  # ns


@dataclass
class StoreFactory:
    con: duckdb.DuckDBPyConnection
    campaign_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    host_id: str = "host-test"
    runs: dict[str, str] = field(default_factory=dict)
    model_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def campaign(self, config: dict[str, Any] | None = None) -> StoreFactory:
        now = datetime.now(UTC)
        if not self.con.execute("SELECT 1 FROM hosts WHERE host_id = ?", [self.host_id]).fetchone():
            insert_row(
                self.con,
                "hosts",
                {
                    "host_id": self.host_id,
                    "cpu_model": "test cpu",
                    "gpus": "[]",
                    "gpu_status": "no GPU (test)",
                },
            )
        insert_row(
            self.con,
            "campaigns",
            {
                "campaign_id": self.campaign_id,
                "host_id": self.host_id,
                "name": "test",
                "profile": "quick",
                "protocol_version": "test",
                "status": "complete",
                "started_utc": now,
                "clock_origin_ns": 0,
                "clock_origin_utc": now,
                "repeats": 1,
                "temperature": 0.3,
                "seed": 1,
                "pause_s": 0.0,
                "config": json.dumps(config or {}),
                "command": "[]",
                "tool_version": "test",
                "packages": "{}",
                "environment": "{}",
            },
        )
        insert_row(
            self.con,
            "models",
            {
                "model_id": self.model_id,
                "campaign_id": self.campaign_id,
                "label": "m",
                "path": "m.gguf",
            },
        )
        return self

    def server_run(
        self,
        label: str,
        ready_ns: int = 0,
        n_cpu_moe: int | None = None,
        gpu_before: dict[str, Any] | None = None,
    ) -> str:
        run_id = str(uuid.uuid4())
        insert_row(
            self.con,
            "server_runs",
            {
                "server_run_id": run_id,
                "campaign_id": self.campaign_id,
                "model_id": self.model_id,
                "config_label": label,
                "n_cpu_moe": n_cpu_moe,
                "mode": "launch",
                "api": "openai-chat",
                "endpoint": "http://x",
                "started_utc": datetime.now(UTC),
                "launch_ns": 0,
                "ready_ns": ready_ns,
                "status": "stopped",
                "gpu_before": to_json(gpu_before),
            },
        )
        self.runs[label] = run_id
        return run_id

    def request(
        self,
        run_label: str,
        chunks: Sequence[tuple[int, str]],  # (t_ns, text) content events
        *,
        sent_ns: int = 0,
        done_ns: int | None = None,
        test_id: str = "simple-response",
        repeat: int = 1,
        stream: bool = True,
        status: str = "ok",
        finish_reason: str | None = "stop",
        usage_tokens: int | None = None,
        timings: dict[str, Any] | None = None,
        tokenized: int | None = None,
        api: str = "openai-chat",
        max_tokens: int = 50,
    ) -> str:
        request_id = str(uuid.uuid4())
        times = [t for t, _ in chunks]
        texts = [x for _, x in chunks]
        first = next((t for t, x in chunks if x), None)
        insert_row(
            self.con,
            "requests",
            {
                "request_id": request_id,
                "server_run_id": self.runs[run_label],
                "campaign_id": self.campaign_id,
                "test_id": test_id,
                "repeat": repeat,
                "stream": stream,
                "api": api,
                "prompt": "p",
                "max_tokens": max_tokens,
                "temperature": 0.3,
                "seed": 1,
                "started_utc": datetime.now(UTC),
                "status": status,
                "finish_reason": finish_reason,
                "output_text": "".join(texts),
                "sent_ns": sent_ns,
                "first_token_ns": first if stream else None,
                "done_ns": done_ns if done_ns is not None else (times[-1] if times else sent_ns),
                "usage_completion_tokens": usage_tokens,
                "server_timings": to_json(timings),
                "tokenized_output_tokens": tokenized,
                "event_count": len(chunks),
            },
        )
        insert_arrow(
            self.con, "chunks", chunk_table(request_id, times, texts, ["content"] * len(chunks))
        )
        return request_id

    def metrics(self, request_id: str) -> dict[str, Any]:
        cur = self.con.execute("SELECT * FROM request_metrics WHERE request_id = ?", [request_id])
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
        assert row is not None
        return dict(zip(names, row, strict=True))
