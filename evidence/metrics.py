"""Every metric, defined once: its SQL over the raw rows and its written definition.

The registry `METRICS` owns each computation and every fact the report needs about a
figure: its view, its SQL, the metrics it needs, its unit, its direction
(`higher_is_better`) and its flags (`token_count`, `per_test_column`, `compared`).
A metric is one of three kinds:

- a column of a generated view (`request_metrics`, `server_run_memory`,
  `server_run_loads`): its SQL is an expression in the view's SELECT, and the views
  are generated from the registry, in dependency order;
- an aggregate (`view=GROUP`): the expression the report computes over a group of
  `request_metrics` rows (`group_sql`);
- a metric that owns its view (`offload_ratio`, `vram_saved_pct`, ...): its SQL is
  the whole SELECT of that view, created after the views it reads.

So the SQL that computes a figure and the sentence the methodology page prints for
it sit side by side and cannot drift apart; pages, charts and history read the unit,
direction and flags from here. Formulas used in more than one place are SQL macros
(`decode_rate`, `expert_on_cpu`, `cpu_expert_bytes`, `block_of`), defined once in
`MACROS`; Python reaches them through `weights_on_device`.

Intermediate relations (content events, token gaps, the offload/baseline pairing,
memory per configuration) are plain views below, not metrics. All are TEMP, so they
work on a read-only connection, and nothing here changes a raw row: a new definition
is a new view, the site rebuilt from the same store.

Adding a metric: one `Metric(...)` in `_DEFS` (after the metrics it needs) and a
test in tests/test_metrics.py; the methodology page lists it from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from common.server_apis import without_finish_reason
from common.thresholds import DEFAULT_THRESHOLDS
from evidence.llama_names import BLOCK_SQL_PATTERN

# The category of the protocol's long tests (tests.category), the population of
# the decode-along-generation figures and the consistent-speed gate.
LONG_CATEGORY = "extended generation"
# The category of the `--n-cpu-moe` curve's speed probes (collector.probes): not protocol
# tests, never scored for quality nor paired with a baseline.
PROBE_CATEGORY = "speed probe"
# A quarter of fewer tokens has no rate worth comparing.
CONSISTENCY_MIN_TOKENS = 16


@dataclass(frozen=True)
class Metric:
    """One figure: where it lives, how it is computed, and what it means."""

    name: str  # the column in its view
    title: str
    unit: str  # display unit
    definition: str
    # A generated view (`GENERATED_VIEWS`) that has it as a column; `GROUP`, an
    # aggregate the report computes per group of `request_metrics` rows; or the name
    # of the view the metric owns, whose SELECT is its `sql`.
    view: str = "request_metrics"
    # Its expression in the generated view's SELECT (later metrics may name earlier
    # ones), the expression over its group's rows (`GROUP`), or its own view's SELECT.
    sql: str = ""
    # The metrics its SQL reads, directly or through the views it reads: each is
    # declared before it, and its view created before this one.
    needs: tuple[str, ...] = ()
    higher_is_better: bool | None = None  # None: neither direction is better
    # Computed from a token count: an estimate where the count came from stream
    # events (`tokens_estimated`), which the report says beside the figure.
    token_count: bool = False
    # One of the protocol's per-test figures: its column on the Performance page (1
    # first). Each is compared offload / baseline per pair of requests (`offload_ratio`).
    per_test_column: int = 0
    # A per-test figure also shown in the Performance page's offload-vs-baseline table.
    compared: bool = False

    @property
    def aggregate(self) -> bool:
        """Computed per group by the report, not a column of a view."""
        return self.view == GROUP

    @property
    def owns_view(self) -> bool:
        """The metric's `sql` is the whole SELECT of its view."""
        return self.view not in GENERATED_VIEWS and not self.aggregate

    @property
    def source_view(self) -> str:
        """The view that holds it as a column, or whose rows it aggregates."""
        return "request_metrics" if self.aggregate else self.view


# The value of `Metric.view` for an aggregate over a group of requests.
GROUP = "group"
# The views generated from the registry, one column per metric, in this order.
GENERATED_VIEWS = ("request_metrics", "server_run_memory", "server_run_loads")


# Formulas used by several views (and by Python through weights_on_device).
MACROS = rf"""
-- (tokens - 1) / seconds between the first and the last of them: the rate once
-- the first token is out. NULL for fewer than two tokens or no time between.
CREATE OR REPLACE TEMP MACRO decode_rate(tokens, first_ns, last_ns) AS
    CASE WHEN tokens > 1 AND last_ns > first_ns
         THEN (tokens - 1) / ((last_ns - first_ns) / 1e9) END;

-- The block index of a tensor name (blk.N.*), NULL for tensors outside blocks.
CREATE OR REPLACE TEMP MACRO block_of(tensor) AS
    TRY_CAST(regexp_extract(tensor, '{BLOCK_SQL_PATTERN}', 1) AS INTEGER);

-- Does the configuration keep the experts of this block in CPU memory?
-- n_cpu_moe: NULL or 0 no offload flag, -1 --cpu-moe (every block), K
-- --n-cpu-moe K (blocks 0..K-1), as llama.cpp applies them.
CREATE OR REPLACE TEMP MACRO expert_on_cpu(block, n_cpu_moe) AS
    coalesce(n_cpu_moe <> 0 AND (n_cpu_moe < 0 OR block < n_cpu_moe), false);

-- GGUF bytes of the expert tensors a configuration keeps in CPU memory, from a
-- model's inspection (models.spec); NULL when K needs the per-block split and
-- the inspection has none.
CREATE OR REPLACE TEMP MACRO cpu_expert_bytes(spec, n_cpu_moe) AS
    CASE WHEN n_cpu_moe IS NULL OR n_cpu_moe = 0 THEN 0
         WHEN n_cpu_moe < 0
             THEN TRY_CAST(json_extract(spec, '$.expert_tensor_bytes') AS BIGINT)
         WHEN json_extract(spec, '$.expert_bytes_by_layer') IS NULL THEN NULL
         ELSE coalesce(list_sum(list_transform(list_filter(
                  TRY_CAST(json_extract(spec, '$.expert_bytes_by_layer') AS BIGINT[][]),
                  lambda x: expert_on_cpu(x[1], n_cpu_moe)), lambda x: x[2])), 0)
    END;

-- GGUF weight bytes a configuration leaves on the device (every layer offloaded):
-- all but the input layer (token embeddings stay in host memory whatever -ngl says)
-- and the experts kept on the CPU, plus the embeddings' copy that serves as the
-- output matrix when the file has none.
CREATE OR REPLACE TEMP MACRO device_weight_bytes(spec, n_cpu_moe) AS
    TRY_CAST(json_extract(spec, '$.tensor_bytes_total') AS BIGINT)
        - coalesce(TRY_CAST(json_extract(spec, '$.input_tensor_bytes') AS BIGINT), 0)
        + coalesce(TRY_CAST(json_extract(spec, '$.tied_output_bytes') AS BIGINT), 0)
        - cpu_expert_bytes(spec, n_cpu_moe);

-- The value after a flag in a stored command line (`argv` JSON list), by its short
-- or long spelling; NULL when neither is there.
CREATE OR REPLACE TEMP MACRO argv_value(argv, short_flag, long_flag) AS
    list_extract(CAST(json_extract_string(argv, '$[*]') AS VARCHAR[]),
                 greatest(list_position(CAST(json_extract_string(argv, '$[*]') AS VARCHAR[]),
                                        short_flag),
                          list_position(CAST(json_extract_string(argv, '$[*]') AS VARCHAR[]),
                                        long_flag)) + 1);

-- The KV cache of n_ctx cells on the device: K and V of every layer in f16
-- (llama.cpp's default cache types).
CREATE OR REPLACE TEMP MACRO kv_cache_bytes(spec, n_ctx) AS
    n_ctx * TRY_CAST(json_extract(spec, '$.kv_elements_per_token') AS BIGINT) * 2;

-- Does the device run expert FFNs for a whole micro-batch? Only for an expert block
-- on the device that is not the last block: the last computes its FFN for the output
-- tokens alone (llama.cpp drops the other rows before it), so with only the last
-- block's experts left there the device's peak is as with none (measured: K = 29 of
-- 30). Or where the device computes host-resident experts for prompt batches (CUDA's
-- op offload copies them over; the RPC device has none).
CREATE OR REPLACE TEMP MACRO experts_computed_on_device(spec, n_cpu_moe, op_offload) AS
    op_offload OR coalesce(len(list_filter(
        TRY_CAST(json_extract(spec, '$.expert_bytes_by_layer') AS BIGINT[][]),
        lambda x: NOT expert_on_cpu(x[1], n_cpu_moe)
                  AND x[1] < TRY_CAST(json_extract(spec, '$.block_count') AS BIGINT) - 1))
        > 0, false);

-- The f32 elements per token of the widest FFN step the device computes: an expert
-- FFN's gate, up and activation for every expert used, a dense block's, or the shared
-- experts'; NULL when the device computes none (attention only).
CREATE OR REPLACE TEMP MACRO ffn_peak_elements(spec, n_cpu_moe, op_offload) AS
    greatest(
        CASE WHEN experts_computed_on_device(spec, n_cpu_moe, op_offload)
             THEN 3 * coalesce(TRY_CAST(json_extract(spec, '$.expert_feed_forward_length')
                                        AS BIGINT),
                               TRY_CAST(json_extract(spec, '$.feed_forward_length') AS BIGINT))
                    * TRY_CAST(json_extract(spec, '$.expert_used_count') AS BIGINT) END,
        CASE WHEN TRY_CAST(json_extract(spec, '$.block_count') AS BIGINT)
                  > TRY_CAST(json_extract(spec, '$.moe_layer_count') AS BIGINT)
             THEN 3 * TRY_CAST(json_extract(spec, '$.feed_forward_length') AS BIGINT) END,
        CASE WHEN TRY_CAST(json_extract(spec, '$.expert_shared_count') AS BIGINT) > 0
             THEN 3 * coalesce(
                 TRY_CAST(json_extract(spec, '$.expert_shared_feed_forward_length') AS BIGINT),
                 TRY_CAST(json_extract(spec, '$.expert_shared_count') AS BIGINT)
                     * coalesce(TRY_CAST(json_extract(spec, '$.expert_feed_forward_length')
                                         AS BIGINT),
                                TRY_CAST(json_extract(spec, '$.feed_forward_length') AS BIGINT)))
             END);

-- The device's compute buffer: what llama.cpp's graph allocator reserves for the
-- worst-case micro-batch of n_ubatch tokens. Per token, its peak is four f32
-- hidden-state vectors plus the widest FFN step's intermediates, or, where the
-- experts run on the host, plus their outputs coming back (one hidden-state vector
-- per expert used); and the f16 attention mask of n_ctx x n_ubatch. Checked against
-- the loader log for every K on two model shapes (tests/engine/test_fit_engine.py).
CREATE OR REPLACE TEMP MACRO compute_buffer_bytes(spec, n_ctx, n_ubatch, n_cpu_moe, op_offload) AS
    n_ubatch * 4 * (4 * TRY_CAST(json_extract(spec, '$.embedding_length') AS BIGINT)
        + greatest(
            TRY_CAST(json_extract(spec, '$.expert_used_count') AS BIGINT)
                * TRY_CAST(json_extract(spec, '$.embedding_length') AS BIGINT),
            ffn_peak_elements(spec, n_cpu_moe, op_offload)))
    + n_ubatch * n_ctx * 2;

-- The device memory a load needs: weights left there, KV cache, compute buffer.
CREATE OR REPLACE TEMP MACRO predicted_device_bytes(spec, n_ctx, n_ubatch, n_cpu_moe, op_offload)
    AS device_weight_bytes(spec, n_cpu_moe) + kv_cache_bytes(spec, n_ctx)
       + compute_buffer_bytes(spec, n_ctx, n_ubatch, n_cpu_moe, op_offload);

-- The share of the model's expert bytes kept in CPU memory at K (0 to 1).
CREATE OR REPLACE TEMP MACRO host_expert_share(spec, n_cpu_moe) AS
    cpu_expert_bytes(spec, n_cpu_moe)
        / nullif(TRY_CAST(json_extract(spec, '$.expert_tensor_bytes') AS DOUBLE), 0);

-- The curve's speed model (METRICS['predicted_curve_rate']): tokens/s at a host
-- expert share, from the seconds per token with none and with all of them there.
CREATE OR REPLACE TEMP MACRO rate_at_share(time_none, time_all, share) AS
    1 / (time_none + share * (time_all - time_none));
"""

_REQUEST_FROM = """
FROM requests r
JOIN server_runs s USING (server_run_id)
JOIN models m ON m.model_id = s.model_id
JOIN request_tokens t USING (request_id)
LEFT JOIN request_itl i USING (request_id)
LEFT JOIN request_consistency c USING (request_id)
LEFT JOIN request_host_load hl USING (request_id)
LEFT JOIN request_loads ld USING (request_id)
LEFT JOIN request_peak_memory pm USING (request_id)
"""
_REQUEST_KEYS = """r.request_id, r.campaign_id, r.server_run_id, s.model_id,
       m.label AS model_label, s.config_label, s.n_cpu_moe, r.test_id, r.repeat, r.stream,
       r.status, r.finish_reason, t.token_source, t.content_events, i.gaps, r.sent_ns,
       r.done_ns, r.max_tokens"""

_MEMORY_FROM = "FROM server_run_windows w JOIN server_run_samples a USING (server_run_id)"
_MEMORY_KEYS = "w.server_run_id, w.device_before_bytes"

# Per server run: its recorded requests' loads (over request_metrics).
_LOADS_FROM = """FROM server_runs s
LEFT JOIN server_run_memory m USING (server_run_id)
LEFT JOIN (SELECT server_run_id, count(*) AS recorded,
                  count(*) FILTER (WHERE loads_in_request > 0) AS with_load,
                  median(model_load_ms) AS load_median,
                  median(request_device_peak_delta_bytes) AS device_request_median
           FROM request_metrics GROUP BY server_run_id) q USING (server_run_id)"""

_SILENT_API = without_finish_reason("r.api")  # for finish_reason_inferred

_PER_REQUEST: tuple[Metric, ...] = (
    Metric(
        "finish_reason_inferred",
        "Finish reason (inferred)",
        "",
        "The server's finish reason, except: `length` when it said `stop` (or, Shimmy's native "
        "API, nothing) but the output reached `max_tokens`, counted by a tokenizer or, when "
        "streamed, by content events (each carries at least one token): Shimmy 1.7.0 says "
        "`stop` whatever ended the generation. Shimmy's native API, which never gives a "
        "reason, ended short of the budget: `stop`.",
        # Which APIs never give a reason is declared with each API (common.server_apis).
        sql="CASE WHEN r.status <> 'ok' THEN r.finish_reason "
        f"WHEN (r.finish_reason = 'stop' OR (r.finish_reason IS NULL AND {_SILENT_API})) "
        "AND greatest(CASE WHEN t.token_source <> 'chunks' THEN t.output_tokens END, "
        "CASE WHEN r.stream THEN t.content_events END) >= r.max_tokens THEN 'length' "
        f"WHEN r.finish_reason IS NULL AND {_SILENT_API} THEN 'stop' "
        "ELSE r.finish_reason END",
    ),
    Metric(
        "completed",
        "Completed",
        "",
        "The request finished: status ok and the finish reason (`finish_reason_inferred`) "
        "`stop` or `length` (not a timeout, a dropped connection or an error). The "
        "population of the performance figures (streamed and completed) and of the "
        "completion rate.",
        sql="(r.status = 'ok' AND finish_reason_inferred IN ('stop', 'length'))",
        needs=("finish_reason_inferred",),
    ),
    Metric(
        "ttft_ms",
        "Time to first token",
        "ms",
        "Arrival of the first streamed event whose content is non-empty, minus the moment the "
        "request was sent; both on the collector's monotonic clock (perf_counter_ns). Streamed "
        "requests only: a non-streamed answer has no first token to time. A server that "
        "loads the model for each request includes that load (see model load in request).",
        sql="CASE WHEN r.stream AND r.first_token_ns IS NOT NULL "
        "THEN (r.first_token_ns - r.sent_ns) / 1e6 END",
        higher_is_better=False,
        per_test_column=1,
        compared=True,
    ),
    Metric(
        "loads_in_request",
        "Model loads in the request",
        "loads",
        "How many model loads the server's log showed during the request: loads whose first "
        "loader line the collector saw (it reads the launched server's log every 20 ms) "
        "between the request's send and the end of its answer. NULL for an attached server: "
        "there is no log to read, so a per-request reload is not verifiable.",
        sql="CASE WHEN s.mode <> 'attach' THEN coalesce(ld.loads, 0) END",
    ),
    # Not `load_ms`: that is server_runs' start-up load (launch to healthy), and a
    # later metric naming `load_ms` would read that column instead.
    Metric(
        "model_load_ms",
        "Model load in the request",
        "ms",
        "From the request's send to the moment the collector saw the last line of the load "
        "inside it (`graph splits` / `sched_reserve: graph`), on the clock of the request "
        "times. From the send, not from the load's first line: whatever the server does "
        "before its loader prints (resolving and opening the model file) is part of what the "
        "reload costs the request. A line is seen at most one poll (20 ms) after it is "
        "written. NULL when the request contained no load, or the load never finished.",
        sql="CASE WHEN ld.load_end_ns IS NOT NULL THEN (ld.load_end_ns - r.sent_ns) / 1e6 END",
        higher_is_better=False,
    ),
    Metric(
        "ttft_after_load_ms",
        "Time to first token after the load",
        "ms",
        "Time to first token minus the model load in the request: prompt processing and the "
        "first token once the model is loaded, the figure comparable with a server that "
        "keeps the model loaded. Floored at 0 (the load's end is seen up to one poll late). "
        "NULL without a load in the request.",
        sql="CASE WHEN ttft_ms IS NOT NULL AND model_load_ms IS NOT NULL "
        "THEN greatest(ttft_ms - model_load_ms, 0) END",
        needs=("ttft_ms", "model_load_ms"),
        higher_is_better=False,
    ),
    Metric(
        "prompt_tokens",
        "Prompt tokens",
        "tokens",
        "The prompt tokens the server processed for the request: llama.cpp's "
        "`timings.prompt_n` (every token of the prompt when the request says "
        "`cache_prompt: false`, the campaign's default), else the usage's `prompt_tokens` "
        "(0 from a server that also says 0 output tokens is no count). NULL when neither "
        "is sent.",
        sql="coalesce(t.timings_prompt_n, nullif(r.usage_prompt_tokens, 0))",
    ),
    Metric(
        "prefill_tps",
        "Prefill tokens/s",
        "tokens/s",
        "Prompt processing speed: the server's own `timings` where it sends them "
        "(`prompt_n` / `prompt_ms`: the engine's time for the prompt alone); else prompt "
        "tokens / time to first token (after the model load, where the request contained "
        "one), which also counts the way to the server and the first decode step, so it "
        "reads lower than the engine's figure. `prefill_source` says which. Streamed "
        "requests, or any request with server timings.",
        sql="CASE WHEN t.timings_prompt_ms > 0 AND t.timings_prompt_n > 0 "
        "THEN t.timings_prompt_n * 1000 / t.timings_prompt_ms "
        "WHEN coalesce(ttft_after_load_ms, ttft_ms) > 0 AND prompt_tokens > 0 "
        "THEN prompt_tokens * 1000 / coalesce(ttft_after_load_ms, ttft_ms) END",
        needs=("ttft_ms", "ttft_after_load_ms", "prompt_tokens"),
        higher_is_better=True,
    ),
    Metric(
        "prefill_source",
        "Prefill source",
        "",
        "Where the prefill speed comes from: `server timings` or `TTFT` (see prefill tokens/s).",
        sql="CASE WHEN t.timings_prompt_ms > 0 AND t.timings_prompt_n > 0 THEN 'server timings' "
        "WHEN prefill_tps IS NOT NULL THEN 'TTFT' END",
        needs=("prefill_tps",),
    ),
    Metric(
        "request_rss_peak_bytes",
        "Server RSS peak during the request",
        "bytes",
        "Highest resident set size of the server's process tree over the telemetry samples "
        "taken between the request's send and its end. The memory figure of a server that "
        "loads the model per request: it holds the model only while a request runs.",
        sql="pm.rss_peak",
        higher_is_better=False,
    ),
    Metric(
        "request_device_peak_delta_bytes",
        "Device memory peak during the request (measured)",
        "bytes",
        "Highest device memory sample (the launched RPC device processes' resident memory, "
        "else NVML's device memory in use) between the request's send and its end, minus "
        "the same figure taken before the server was launched.",
        sql="CASE WHEN json_extract_string(s.device, '$.source') IS NOT NULL "
        "THEN pm.dev_peak - TRY_CAST(json_extract(s.device, '$.mem_before_bytes') AS BIGINT) "
        "ELSE pm.gpu_peak - TRY_CAST(json_extract(s.gpu_before, '$.mem_used_bytes') AS BIGINT) "
        "END",
        higher_is_better=False,
    ),
    Metric(
        "e2e_s",
        "End-to-end time",
        "s",
        "Arrival of `[DONE]` (or, if the stream ended without it, of the last event; "
        "non-streamed: of the complete body) minus the send time.",
        sql="(r.done_ns - r.sent_ns) / 1e9",
        higher_is_better=False,
        per_test_column=4,
        compared=True,
    ),
    Metric(
        "output_tokens",
        "Output tokens",
        "tokens",
        "The server's `usage.completion_tokens` when sent (a usage of 0 for a non-empty output, "
        "Shimmy's, is no count); else llama.cpp's `timings.predicted_n`; else the tokenizer's "
        "count of the output text (the server's `/tokenize`, or `llama-tokenize` offline on the "
        "model file: `requests.tokenizer`); else "
        "the number of content events, flagged as an estimate. `token_source` says which; "
        "`tokens_disagree` flags requests whose available sources differ by more than 10%.",
        sql="t.output_tokens",
        token_count=True,
    ),
    Metric(
        "tokens_per_event",
        "Tokens per content event",
        "tokens",
        "Output tokens (the server's or the tokenizer's count) / content events of a streamed "
        "request: 1 when the server streams token by token (the last token, end of "
        "generation, often has no text, so slightly above 1 is normal); well above 1 when it "
        "batches tokens into events.",
        sql="CASE WHEN r.stream AND t.content_events > 0 THEN output_tokens / t.content_events END",
        needs=("output_tokens",),
    ),
    Metric(
        "tokens_estimated",
        "Token count estimated",
        "",
        "True when no tokenizer counted the output (`token_source` = `chunks`): the count is "
        "the number of content events.",
        sql="(t.token_source = 'chunks')",
    ),
    Metric(
        "tokens_disagree",
        "Token counts disagree",
        "",
        "The available token counts (usage, timings, the tokenizer's) differ by more than "
        "10%; or, for a streamed request counted only by a tokenizer (no usage, no timings: "
        "Shimmy), its count and the number of content events differ by more than 10% (and "
        "more than one).",
        sql="((greatest(t.usage_completion_tokens, t.timings_tokens, r.tokenized_output_tokens) "
        "> 1.10 * least(t.usage_completion_tokens, t.timings_tokens, r.tokenized_output_tokens))"
        " OR (r.stream AND t.token_source = 'tokenize' AND abs(r.tokenized_output_tokens - "
        "t.content_events) > greatest(1, 0.10 * r.tokenized_output_tokens)))",
    ),
    Metric(
        "avg_tps",
        "Average tokens/s",
        "tokens/s",
        "Output tokens / end-to-end time in seconds: the protocol's definition, used in the "
        "summary table. It includes the time to first token (prompt processing and queueing).",
        sql="CASE WHEN r.done_ns > r.sent_ns THEN output_tokens / e2e_s END",
        needs=("output_tokens", "e2e_s"),
        higher_is_better=True,
        token_count=True,
        per_test_column=3,
    ),
    Metric(
        "decode_tps",
        "Decode tokens/s",
        "tokens/s",
        "(Output tokens - 1) / (arrival of the last content event - arrival of the first "
        "content event): the generation rate once the first token is out. Needs at least two "
        "content events.",
        sql="CASE WHEN r.stream "
        "THEN decode_rate(output_tokens, t.first_content_ns, t.last_content_ns) END",
        needs=("output_tokens",),
        higher_is_better=True,
        token_count=True,
        per_test_column=2,
        compared=True,
    ),
    Metric(
        "itl_p50_ms",
        "Inter-token latency p50",
        "ms",
        "The median gap between consecutive content events of a streamed request (a request "
        "with E content events has E - 1 gaps). A server that sends one token per event (see "
        "tokens per event) makes this the time between tokens; one that batches tokens shows "
        "the gap per event: nothing is divided, no token time is invented.",
        sql="i.itl_p50_ms",
        higher_is_better=False,
    ),
    Metric(
        "itl_p90_ms",
        "Inter-token latency p90",
        "ms",
        "The 90th percentile of the gaps between content events defined for the p50.",
        sql="i.itl_p90_ms",
        higher_is_better=False,
    ),
    Metric(
        "itl_p99_ms",
        "Inter-token latency p99",
        "ms",
        "The 99th percentile of the gaps between content events defined for the p50.",
        sql="i.itl_p99_ms",
        higher_is_better=False,
    ),
    Metric(
        "max_stall_ms",
        "Longest stall",
        "ms",
        "The longest time between two consecutive content events: how long a reader stared "
        "at a frozen stream.",
        sql="i.max_stall_ms",
        higher_is_better=False,
    ),
    Metric(
        "itl_cv",
        "Streaming steadiness (CV)",
        "",
        "Coefficient of variation (standard deviation / mean) of the gaps between content "
        "events; 0 is a "
        "perfectly steady stream. The protocol's 'streaming responsiveness' is reported as "
        "this figure with the ITL percentiles, not as a rating.",
        sql="i.itl_cv",
        higher_is_better=False,
    ),
    Metric(
        "consistency_ratio",
        "Decode consistency (last/first quarter)",
        "",
        "Rate over the last quarter of a request's content events divided by the rate over its "
        "first quarter (rate = events in the quarter - 1 over the time between its first and "
        "last event; the request's tokens per event cancel out). Below 1: generation slowed "
        f"down as the sequence grew. Requests with at least {CONSISTENCY_MIN_TOKENS} content "
        "events.",
        sql="c.consistency_ratio",
        higher_is_better=True,
    ),
    Metric(
        "server_decode_tps",
        "Server-reported decode tokens/s",
        "tokens/s",
        "llama.cpp's own `timings.predicted_per_second` for the request, when the server sends it.",
        sql="t.server_decode_tps",
        higher_is_better=True,
    ),
    Metric(
        "client_server_ratio",
        "Client/server decode ratio",
        "",
        "Client decode tokens/s divided by the server-reported decode tokens/s for the same "
        "request: how much of the engine's speed reaches the client (1.0 = all of it).",
        sql="CASE WHEN server_decode_tps > 0 THEN decode_tps / server_decode_tps END",
        needs=("decode_tps", "server_decode_tps"),
    ),
    Metric(
        "other_cpu_cores",
        "CPU used by other processes",
        "cores",
        "The cores other processes kept busy while the request ran: per telemetry sample, the "
        "whole machine's busy CPU (sys_cpu_percent x logical CPUs / 100) minus the server's "
        "process tree, its launched RPC device processes and the collector with its sampler "
        "(each 100 = one core). Each sample's CPU figures are averages since the sample "
        "before; the request's figure is their mean over its send to done, each sample "
        "weighted by the part of the request its span covers, floored at 0. NULL "
        "(not measured) without telemetry, without the collector's or the server's CPU "
        "(an attached server, a store older than migration 8) or without the host's CPU count.",
        sql="hl.other_cpu_cores",
        higher_is_better=False,
    ),
    Metric(
        "starved",
        "Starved by other processes",
        "",
        "Other processes used more than `max_other_cpu_cores` (default "
        f"{DEFAULT_THRESHOLDS['max_other_cpu_cores']:g}) cores on average during the request "
        "(other CPU above): the server may have waited for a core, so its timings describe "
        "the host's load, not the configuration. NULL, not false, when the CPU of other "
        "processes was not measured.",
        sql="(other_cpu_cores > hl.starved_above_cores)",
        needs=("other_cpu_cores",),
    ),
    Metric(
        "in_headline",
        "In the headline figures",
        "",
        "Completed and not starved: the population of the paired offload/baseline ratios, "
        "the per-configuration means and the timing gates (consistent speed, completion "
        "time, responsiveness). A request whose host load was not measured counts. "
        "`moe-evidence build --include-starved` counts starved requests too.",
        sql="(completed AND (NOT coalesce(starved, false) OR {include_starved}))",
        needs=("completed", "starved"),
    ),
)

# The protocol's per-test figures, in their page order (`per_test_column`), and
# those of the offload-vs-baseline table.
_PER_TEST = sorted((m for m in _PER_REQUEST if m.per_test_column), key=lambda m: m.per_test_column)
PER_TEST_METRICS = tuple(m.name for m in _PER_TEST)
COMPARE_METRICS = tuple(m.name for m in _PER_TEST if m.compared)
_ratio_columns = ",\n           ".join(f"o.{n} / nullif(b.{n}, 0) AS {n}" for n in PER_TEST_METRICS)

_DEFS: tuple[Metric, ...] = (
    *_PER_REQUEST,
    # Offload / baseline per pair of requests in the headline (completed, not
    # starved), one row per per-test metric; summarised by
    # evidence.statistics.paired_ratio.
    Metric(
        "offload_ratio",
        "Offload / baseline (paired)",
        "",
        "For a metric (TTFT, decode tokens/s, E2E, average tokens/s): each offload request is "
        "paired with the baseline request of the same model, test, repeat and streaming mode "
        "(same prompt and seed), both completed and neither starved by other processes "
        "(`in_headline`); the figure is the geometric mean of the "
        "per-pair ratios offload / baseline, with a 95 % interval from the t distribution of "
        "their logarithms, shown from 3 pairs on. Below 1: the offload configuration is "
        "slower to decode, or faster to its first token.",
        view="offload_pair_ratios",
        sql=f"""
WITH r AS (
    SELECT p.campaign_id, p.model_id, p.config_label, p.test_id, p.repeat, p.stream,
           {_ratio_columns}
    FROM offload_pairs p
    JOIN request_metrics o ON o.request_id = p.offload_request_id
    JOIN request_metrics b ON b.request_id = p.baseline_request_id
    WHERE o.in_headline AND b.in_headline
)
UNPIVOT r ON {", ".join(PER_TEST_METRICS)} INTO NAME metric VALUE offload_ratio
""",
        needs=(*PER_TEST_METRICS, "in_headline"),
    ),
    Metric(
        "completion_rate",
        "Completion rate",
        "%",
        "Requests that finished (status ok with finish reason `stop` or `length`: the "
        "`completed` column) / all requests of the group, streamed and not, in percent.",
        view=GROUP,
        sql="100.0 * avg(completed::INTEGER)",
        needs=("completed",),
        higher_is_better=True,
    ),
    Metric(
        "starved_rate",
        "Starved requests",
        "%",
        "Streamed requests flagged `starved` / all streamed requests of the group (those "
        "whose host load was not measured count as not starved), in percent. A campaign "
        "above `max_starved_share` (default "
        f"{100 * DEFAULT_THRESHOLDS['max_starved_share']:g} %) says in its verdict that the "
        "host was busy.",
        view=GROUP,
        sql="100.0 * count(*) FILTER (WHERE stream AND starved) "
        "/ nullif(count(*) FILTER (WHERE stream), 0)",
        needs=("starved",),
        higher_is_better=False,
    ),
    Metric(
        "rss_idle_bytes",
        "Server RSS after load",
        "bytes",
        "Median resident set size of the server's process tree over the idle window that "
        "follows readiness (the collector waits `idle_window_s`, default 1 s, before the "
        "warm-up request).",
        view="server_run_memory",
        sql="a.rss_idle::BIGINT",
        higher_is_better=False,
    ),
    Metric(
        "rss_peak_bytes",
        "Server RSS peak during generation",
        "bytes",
        "Highest resident set size of the server's process tree between the first recorded "
        "request's send and the last one's end, from the ~10 Hz telemetry samples.",
        view="server_run_memory",
        sql="a.rss_peak",
        higher_is_better=False,
    ),
    Metric(
        "gpu_idle_delta_bytes",
        "GPU memory after load (NVML)",
        "bytes",
        "NVML device memory in use, all NVIDIA devices, median over the idle window, minus the "
        "same figure sampled just before the server was launched.",
        view="server_run_memory",
        sql="a.gpu_idle::BIGINT - w.gpu_before_bytes",
        higher_is_better=False,
    ),
    Metric(
        "gpu_peak_delta_bytes",
        "GPU memory peak (NVML)",
        "bytes",
        "Highest NVML device memory in use during generation minus the figure before launch.",
        view="server_run_memory",
        sql="a.gpu_peak - w.gpu_before_bytes",
        higher_is_better=False,
    ),
    Metric(
        "gpu_proc_peak_bytes",
        "GPU memory of the server's processes, peak (NVML)",
        "bytes",
        "Highest NVML per-process GPU memory of the server's process tree over the run.",
        view="server_run_memory",
        sql="a.gpu_proc_peak",
        higher_is_better=False,
    ),
    Metric(
        "device_source",
        "Device memory source",
        "",
        "How the device's memory was measured: `RPC device process` (the resident memory of "
        "the llama.cpp RPC device processes launched for the run) or `NVML` (a GPU); NULL "
        "when neither was sampled.",
        view="server_run_memory",
        sql="CASE WHEN w.device_process_source IS NOT NULL THEN w.device_process_source "
        "WHEN a.gpu_idle IS NOT NULL OR a.gpu_peak IS NOT NULL THEN 'NVML' END",
    ),
    Metric(
        "device_idle_delta_bytes",
        "Device memory after load (measured)",
        "bytes",
        "The offload device's memory, median over the idle window after readiness, minus the "
        "same figure taken just before the server was launched. The device is a GPU (NVML "
        "device memory in use, all NVIDIA devices) or llama.cpp's RPC device (the resident "
        "memory of the ggml-rpc-server processes launched for this server run: the tensors "
        "and buffers the server placed on the device); `device_source` says which.",
        view="server_run_memory",
        sql="CASE WHEN w.device_process_source IS NOT NULL "
        "THEN a.dev_idle::BIGINT - w.device_before_bytes ELSE gpu_idle_delta_bytes END",
        needs=("gpu_idle_delta_bytes",),
        higher_is_better=False,
    ),
    Metric(
        "device_peak_delta_bytes",
        "Device memory peak (measured)",
        "bytes",
        "The highest device memory sample during generation (first recorded request's send "
        "to the last one's end) minus the figure before launch; same sources as after load.",
        view="server_run_memory",
        sql="CASE WHEN w.device_process_source IS NOT NULL "
        "THEN a.dev_peak - w.device_before_bytes ELSE gpu_peak_delta_bytes END",
        needs=("gpu_peak_delta_bytes",),
        higher_is_better=False,
    ),
    Metric(
        "device_rss_idle_bytes",
        "RPC device resident memory after load",
        "bytes",
        "Median resident memory of the launched RPC device processes over the idle window "
        "(not minus the figure before launch).",
        view="server_run_memory",
        sql="a.dev_idle::BIGINT",
        higher_is_better=False,
    ),
    Metric(
        "device_rss_peak_bytes",
        "RPC device resident memory peak",
        "bytes",
        "Highest resident memory of the launched RPC device processes during generation.",
        view="server_run_memory",
        sql="a.dev_peak",
        higher_is_better=False,
    ),
    Metric(
        "cpu_percent_avg_generating",
        "Server CPU while generating",
        "%",
        "Mean CPU of the server's process tree over the telemetry samples during generation; "
        "100 = one core busy.",
        view="server_run_memory",
        sql="a.cpu_generating",
    ),
    Metric(
        "device_cpu_percent_avg_generating",
        "RPC device CPU while generating",
        "%",
        "Mean CPU of the launched RPC device processes during generation; 100 = one core.",
        view="server_run_memory",
        sql="a.device_cpu_generating",
    ),
    Metric(
        "telemetry_samples",
        "Telemetry samples",
        "samples",
        "How many telemetry samples the server run has.",
        view="server_run_memory",
        sql="a.samples",
    ),
    Metric(
        "requests_with_load",
        "Requests that contained a model load",
        "requests",
        "Recorded requests of the server run with at least one model load in them "
        "(`loads_in_request` > 0); NULL for an attached server (no log).",
        view="server_run_loads",
        sql="CASE WHEN s.mode <> 'attach' THEN coalesce(q.with_load, 0) END",
    ),
    Metric(
        "reloads_per_request",
        "Loads the model for each request",
        "",
        "The server run loaded the model inside at least half of its recorded requests (and "
        "inside at least one): a server that does not keep the model between requests "
        "(Shimmy 1.7.0). Its time to first token then includes a load, its memory after "
        "start-up says nothing (the model is not resident), and its memory is taken per "
        "request. NULL when not verifiable: an attached server has no log to read.",
        view="server_run_loads",
        sql="CASE WHEN s.mode <> 'attach' AND q.recorded > 0 "
        "THEN requests_with_load > 0 AND 2 * requests_with_load >= q.recorded END",
        needs=("requests_with_load",),
    ),
    Metric(
        "model_load_ms_median",
        "Model load per request (median)",
        "ms",
        "The median of the model load in the request (`model_load_ms`) over the server run's "
        "recorded requests that contained a finished load.",
        view="server_run_loads",
        sql="q.load_median",
        higher_is_better=False,
    ),
    Metric(
        "device_loaded_delta_bytes",
        "Device memory with the model loaded (measured)",
        "bytes",
        "The device memory figure VRAM saved compares: the memory after load "
        "(`device_idle_delta_bytes`), except for a server run that loads the model per "
        "request (`reloads_per_request`), whose model is not resident after start-up: there, "
        "the median over its requests of the device memory peak during each request "
        "(`request_device_peak_delta_bytes`).",
        view="server_run_loads",
        sql="CASE WHEN reloads_per_request THEN q.device_request_median "
        "ELSE m.device_idle_delta_bytes END",
        needs=("reloads_per_request",),
        higher_is_better=False,
    ),
    # VRAM saved per offload configuration against its baseline (offload_configs).
    # Each source's saving where both sides have it; the headline (`source`,
    # `vram_saved_pct`) is the best of them: measured > log > estimated. Measured
    # figures compare only runs of one server build measured the same way (one
    # campaign is one host by construction). A baseline that does not fit the device
    # has only its estimate: then the headline is the offload's best figure against it
    # (source 'estimated baseline': the protocol's own "baseline GPU memory
    # (estimated)"), the offload side from the log before the process (the log's
    # buffers are what the estimate predicts), each side's source named.
    Metric(
        "vram_saved_pct",
        "VRAM saved",
        "%",
        "1 - offload / baseline device memory after load, in percent, for the same model in "
        "the same campaign (same host and build). Source, in order of preference, and the same "
        "source on both sides: measured (device memory after load minus before launch: NVML "
        "on a GPU, the RPC device process's resident memory on llama.cpp's RPC device; for a "
        "server that loads the model per request, the median per-request peak instead: "
        "`device_loaded_delta_bytes`), else "
        "log (the device buffers, model + KV + compute, the server's loader log printed), "
        "else estimated (predicted from the model file alone: the GGUF weight bytes left on "
        "the device, the f16 KV cache of the context, and the compute buffer of one "
        "micro-batch from the model's shapes; never from the log, which checks it). A "
        "baseline that does not fit the device (its load failed for want of device memory) "
        "has only its estimate: the saving is then the offload's device memory as the "
        "server reported it (log, else measured) against that estimate, labelled "
        "estimated, each side's source named, as the protocol's model table does. The "
        "source is always shown with the figure.",
        view="vram_saved",
        sql="""
WITH sized AS (
    SELECT f.campaign_id, f.model_id, f.config_label, f.n_cpu_moe, f.loaded, f.does_not_fit,
           f.unfit_error, f.device_memory_bytes,
           c.gpu_measured_bytes, c.gpu_log_mib, c.measured_source, c.version,
           e.estimated_bytes, e.estimate_parts
    FROM config_fit f
    JOIN config_device_estimate e USING (campaign_id, model_id, config_label)
    LEFT JOIN config_memory c USING (campaign_id, model_id, config_label)
), pairs AS (
    SELECT o.campaign_id, o.model_id, o.config_label, o.n_cpu_moe,
           oc.baseline_label, b.does_not_fit AS baseline_does_not_fit,
           b.unfit_error AS baseline_unfit_error, b.device_memory_bytes,
           b.gpu_measured_bytes AS b_measured, o.gpu_measured_bytes AS o_measured,
           b.gpu_log_mib * 1048576 AS b_log, o.gpu_log_mib * 1048576 AS o_log,
           b.estimated_bytes AS b_est, o.estimated_bytes AS o_est,
           o.estimate_parts,
           b.version IS NOT NULL AND b.version = o.version
               AND b.measured_source IS NOT DISTINCT FROM o.measured_source AS same_build,
           coalesce(o.measured_source, b.measured_source) AS measured_source
    FROM sized o
    JOIN offload_configs oc USING (campaign_id, model_id, config_label)
    JOIN sized b ON b.campaign_id = o.campaign_id AND b.model_id = o.model_id
         AND b.config_label = oc.baseline_label
    WHERE o.loaded
), pcts AS (
    SELECT *,
           CASE WHEN b_measured > 0 AND o_measured IS NOT NULL AND same_build
                THEN 100 * (1 - o_measured / b_measured) END AS measured_pct,
           CASE WHEN b_log > 0 AND o_log IS NOT NULL
                THEN 100 * (1 - o_log / b_log) END AS log_pct,
           CASE WHEN b_est > 0 AND o_est IS NOT NULL
                THEN 100 * (1 - o_est / b_est) END AS estimated_pct,
           CASE WHEN o_log IS NOT NULL THEN 'log'
                WHEN o_measured IS NOT NULL THEN 'measured' END AS offload_best_source
    FROM pairs
), chosen AS (
    SELECT *,
           CASE WHEN baseline_does_not_fit AND b_est > 0 AND offload_best_source IS NOT NULL
                    THEN 'estimated baseline'
                WHEN measured_pct IS NOT NULL THEN 'measured'
                WHEN log_pct IS NOT NULL THEN 'log'
                WHEN estimated_pct IS NOT NULL THEN 'estimated' END AS source
    FROM pcts
)
SELECT campaign_id, model_id, config_label, n_cpu_moe, baseline_label, source,
       measured_source, estimate_parts, baseline_does_not_fit, baseline_unfit_error,
       device_memory_bytes,
       CASE WHEN source = 'estimated baseline' THEN 'estimated' ELSE source END
           AS baseline_source,
       CASE WHEN source = 'estimated baseline' THEN offload_best_source ELSE source END
           AS offload_source,
       CASE source WHEN 'measured' THEN b_measured WHEN 'log' THEN b_log
                   WHEN 'estimated' THEN b_est WHEN 'estimated baseline' THEN b_est
                   END AS baseline_bytes,
       CASE source WHEN 'measured' THEN o_measured WHEN 'log' THEN o_log
                   WHEN 'estimated' THEN o_est
                   WHEN 'estimated baseline' THEN coalesce(o_log, o_measured) END
           AS offload_bytes,
       CASE WHEN source = 'estimated baseline'
            THEN 100 * (1 - coalesce(o_log, o_measured) / b_est)
            ELSE coalesce(measured_pct, log_pct, estimated_pct) END AS vram_saved_pct,
       measured_pct, log_pct, estimated_pct, same_build,
       b_measured, o_measured, b_log, o_log, b_est, o_est
FROM chosen
""",
        needs=("device_source", "device_loaded_delta_bytes"),
        higher_is_better=True,
    ),
    # The weight bytes one decode step reads, per configuration, from the GGUF file:
    # on the device, the non-expert weights plus the active share (experts used /
    # experts) of the expert tensors left there; on the host, the active share of
    # the expert tensors kept in CPU memory. Without a device (no GPU buffers in the
    # log, no device measured) every byte is read from host memory.
    Metric(
        "host_bytes_per_token",
        "Host weight bytes per token (estimated)",
        "bytes",
        "The weight bytes one decode step reads from host memory, from the GGUF file: with "
        "no offload device (every weight in host memory), the non-expert weights plus the "
        "active experts' share (expert tensor bytes x experts used / experts); with a device, "
        "the active share of the expert tensors kept in CPU memory. An upper bound: an "
        "embedding lookup reads one row.",
        view="config_bytes_per_token",
        sql="""
WITH sized AS (
    SELECT c.campaign_id, c.model_id, c.config_label, c.n_cpu_moe,
           TRY_CAST(json_extract(md.spec, '$.tensor_bytes_total') AS BIGINT) AS total_b,
           TRY_CAST(json_extract(md.spec, '$.expert_tensor_bytes') AS BIGINT) AS experts_b,
           md.expert_used_count / nullif(md.expert_count, 0) AS active,
           cpu_expert_bytes(md.spec, c.n_cpu_moe) AS host_experts_b,
           c.gpu_log_mib IS NOT NULL OR c.measured_source IS NOT NULL AS has_device
    FROM config_memory c JOIN models md USING (model_id)
)
SELECT campaign_id, model_id, config_label, n_cpu_moe, has_device,
       (total_b - experts_b) + (experts_b - host_experts_b) * active AS device_bytes,
       host_experts_b * active AS host_bytes,
       host_experts_b = experts_b AND experts_b > 0 AS all_on_host,
       CASE WHEN has_device THEN host_experts_b * active
            ELSE total_b - experts_b + experts_b * active END AS host_bytes_per_token
FROM sized WHERE active IS NOT NULL AND total_b IS NOT NULL AND experts_b IS NOT NULL
""",
        needs=("device_source",),
    ),
    # The view `host_traffic`: mean decode
    # tokens/s over the configuration's completed streamed requests x the bytes per
    # token read from host memory, and its share of the measured copy bandwidth.
    Metric(
        "implied_host_traffic",
        "Implied host memory traffic (estimated)",
        "bytes/s",
        "Mean decode tokens/s x host weight bytes per token. Compared with the host copy "
        "bandwidth the collector measured at campaign start (best of 5 numpy copies of a "
        "256 MiB buffer, bytes read + written), it shows whether decoding is bound by memory "
        "bandwidth: near 100 % it is; far below with the CPU busy, it is compute- or "
        "overhead-bound.",
        view="host_traffic",
        sql="""
SELECT b.campaign_id, b.model_id, b.config_label, b.host_bytes_per_token,
       avg(r.decode_tps) * b.host_bytes_per_token AS implied_host_traffic,
       100 * avg(r.decode_tps) * b.host_bytes_per_token
           / nullif(any_value(cp.mem_bandwidth_bytes_per_s), 0) AS host_bandwidth_pct
FROM config_bytes_per_token b
JOIN campaigns cp USING (campaign_id)
LEFT JOIN request_metrics r ON r.campaign_id = b.campaign_id AND r.model_id = b.model_id
     AND r.config_label = b.config_label AND r.stream AND r.in_headline
GROUP BY b.campaign_id, b.model_id, b.config_label, b.host_bytes_per_token
""",
        needs=("decode_tps", "in_headline", "host_bytes_per_token"),
    ),
    # The --n-cpu-moe curve, measured (the view `curve_points`): per sweep
    # configuration and speed probe, prefill and decode as two rows.
    Metric(
        "curve_rate",
        "Speed at K (measured)",
        "tokens/s",
        "Per configuration of the `--n-cpu-moe` sweep and speed probe (a prompt of a "
        "given length, then a fixed decode budget; collector.probes): the mean over its "
        "completed, not starved streamed requests of prefill tokens/s (`measure` = "
        "prefill: the server's timings, else prompt tokens / TTFT, `source` says which) "
        "and of decode tokens/s after that prompt (`measure` = decode), with their count "
        "and sample standard deviation; beside them the configuration's device memory "
        "(the loader log's device buffers, and the measured device memory after load) "
        "and the server's resident memory after load.",
        view="curve_points",
        sql=f"""
WITH probe AS (
    SELECT r.campaign_id, r.model_id, r.config_label, r.test_id, r.prompt_tokens,
           r.prefill_tps, r.prefill_source, r.decode_tps
    FROM request_metrics r JOIN tests t USING (campaign_id, test_id)
    WHERE t.category = '{PROBE_CATEGORY}' AND r.stream AND r.in_headline
), measured AS (
    SELECT p.campaign_id, p.model_id, p.config_label, p.test_id,
           avg(p.prompt_tokens) AS prompt_tokens, m.measure,
           count(m.rate) AS n, avg(m.rate) AS curve_rate, stddev_samp(m.rate) AS rate_sd,
           min(m.rate) AS rate_min, max(m.rate) AS rate_max,
           string_agg(DISTINCT m.source, ', ') AS source
    FROM probe p
    CROSS JOIN LATERAL (VALUES ('prefill', p.prefill_tps, p.prefill_source),
                               ('decode', p.decode_tps, 'client')) m(measure, rate, source)
    WHERE m.rate IS NOT NULL
    GROUP BY ALL
)
SELECT m.*, c.n_cpu_moe,
       c.gpu_log_mib * 1048576 AS device_log_bytes,
       c.gpu_measured_bytes AS device_measured_bytes,
       c.rss_idle_bytes AS host_rss_bytes
FROM measured m JOIN config_memory c USING (campaign_id, model_id, config_label)
""",
        needs=("prompt_tokens", "prefill_tps", "prefill_source", "decode_tps", "in_headline"),
        higher_is_better=True,
    ),
    # The curve, predicted from its ends (the view `curve_prediction`).
    Metric(
        "predicted_curve_rate",
        "Speed at K (predicted)",
        "tokens/s",
        "The time per token at K, predicted from the two ends of the curve alone: the runs "
        "with no expert tensor in CPU memory (K = 0) and with all of them there (K = all "
        "MoE blocks). Between them each token's time moves with the share x(K) of the "
        "expert bytes kept in CPU memory (from the GGUF file): the device stops reading "
        "those bytes and the host starts, and each block moved adds its graph splits and "
        "their round trips; so time(K) = time(0) + x(K) (time(all) - time(0)) and the "
        "prediction is 1 / time(K), per probe and measure (prefill, decode). The ends are "
        "the calibration points (error 0 by construction); the error of every point between "
        "(measured / predicted - 1) tests the model. No point between the ends is fitted.",
        view="curve_prediction",
        sql="""
WITH pts AS (
    SELECT c.*, host_expert_share(md.spec, c.n_cpu_moe) AS host_share
    FROM curve_points c JOIN models md USING (model_id)
), ends AS (
    SELECT campaign_id, model_id, test_id, measure,
           avg(1 / curve_rate) FILTER (WHERE host_share = 0) AS time_none,
           avg(1 / curve_rate) FILTER (WHERE host_share = 1) AS time_all
    FROM pts WHERE curve_rate > 0 GROUP BY ALL
)
SELECT p.campaign_id, p.model_id, p.config_label, p.n_cpu_moe, p.test_id, p.measure,
       p.prompt_tokens, p.n, p.curve_rate, p.rate_sd, p.source, p.host_share,
       p.host_share IN (0, 1) AS calibration_point,
       e.time_none, e.time_all,
       rate_at_share(e.time_none, e.time_all, p.host_share) AS predicted_curve_rate,
       p.curve_rate / rate_at_share(e.time_none, e.time_all, p.host_share) - 1
           AS prediction_error
FROM pts p JOIN ends e USING (campaign_id, model_id, test_id, measure)
WHERE e.time_none IS NOT NULL AND e.time_all IS NOT NULL
""",
        needs=("curve_rate",),
        higher_is_better=True,
    ),
    # Decode rate in each tenth of a long generation, per request (the view
    # `decode_deciles`): does speed hold up?
    Metric(
        "decode_rate_along_generation",
        "Decode rate along the generation",
        "tokens/s",
        "Long tests (category 'extended generation') only: each request's content events are "
        "cut into tenths; the rate in a tenth is (events in it - 1) / the time between its "
        "first and last event, times the request's tokens per event. The chart shows the mean "
        "over requests per tenth.",
        view="decode_deciles",
        sql=f"""
WITH tt AS (
    SELECT t.request_id, t.t_ns, t.tokens_per_event, (t.event_idx * 10) // t.n_events AS decile
    FROM event_times t
    JOIN request_metrics r USING (request_id)
    JOIN tests ts USING (campaign_id, test_id)
    WHERE r.stream AND r.in_headline AND ts.category = '{LONG_CATEGORY}' AND t.n_events >= 20
)
SELECT request_id, decile,
       decode_rate(count(*), min(t_ns), max(t_ns)) * any_value(tokens_per_event)
           AS decode_rate_along_generation
FROM tt GROUP BY request_id, decile
""",
        needs=("in_headline",),
    ),
)

METRICS: dict[str, Metric] = {m.name: m for m in _DEFS}


def _check_registry() -> None:
    """One declaration per name; each metric needs only metrics declared before it,
    a generated view's column only earlier columns of its view; one metric per
    owned view."""
    seen: dict[str, Metric] = {}
    owned: set[str] = set()
    for metric in _DEFS:
        if metric.name in seen:
            raise ValueError(f"metric {metric.name} is declared twice")
        missing = [n for n in metric.needs if n not in seen]
        if missing:
            raise ValueError(f"metric {metric.name} needs {missing} declared before it")
        if metric.view in GENERATED_VIEWS:
            other = [n for n in metric.needs if seen[n].view != metric.view]
            if other:
                raise ValueError(
                    f"metric {metric.name} of {metric.view} needs {other} of another view"
                )
        elif metric.owns_view:
            if metric.view in owned or metric.view in GENERATED_VIEWS:
                raise ValueError(f"view {metric.view} has two owners")
            owned.add(metric.view)
        seen[metric.name] = metric


_check_registry()


def _generated_view(name: str, keys: str, source: str, frozen: bool = False) -> str:
    """`CREATE VIEW name` selecting `keys` and every registered metric of the view,
    in registry order; a metric may name only metrics defined before it. `frozen`:
    a TEMP table of the same rows instead (see `views_sql`)."""
    columns = [f"{m.sql} AS {m.name}" for m in _DEFS if m.view == name]
    select = ",\n       ".join([keys, *columns])
    kind = "TABLE" if frozen else "VIEW"
    return f"CREATE OR REPLACE TEMP {kind} {name} AS\nSELECT {select}\n{source};\n"


_INPUT_VIEWS = """
CREATE OR REPLACE TEMP VIEW content_chunks AS
SELECT c.request_id, c.seq, c.t_ns, length(c.text) AS chars,
       row_number() OVER (PARTITION BY c.request_id ORDER BY c.seq) - 1 AS idx
FROM chunks c
WHERE c.kind = 'content' AND c.text <> '';

CREATE OR REPLACE TEMP VIEW request_tokens AS
WITH ev AS (
    SELECT request_id, count(*) AS content_events, sum(chars) AS content_chars,
           min(t_ns) AS first_content_ns, max(t_ns) AS last_content_ns
    FROM content_chunks GROUP BY request_id
)
SELECT r.request_id,
       coalesce(ev.content_events, 0) AS content_events,
       coalesce(ev.content_chars, 0) AS content_chars,
       ev.first_content_ns, ev.last_content_ns,
       TRY_CAST(json_extract(r.server_timings, '$.predicted_n') AS BIGINT) AS timings_tokens,
       TRY_CAST(json_extract(r.server_timings, '$.predicted_per_second') AS DOUBLE)
           AS server_decode_tps,
       TRY_CAST(json_extract(r.server_timings, '$.prompt_n') AS BIGINT) AS timings_prompt_n,
       TRY_CAST(json_extract(r.server_timings, '$.prompt_ms') AS DOUBLE) AS timings_prompt_ms,
       coalesce(u.usage_tokens,
                TRY_CAST(json_extract(r.server_timings, '$.predicted_n') AS BIGINT),
                r.tokenized_output_tokens,
                ev.content_events, 0) AS output_tokens,
       CASE WHEN u.usage_tokens IS NOT NULL THEN 'usage'
            WHEN json_extract(r.server_timings, '$.predicted_n') IS NOT NULL THEN 'timings'
            WHEN r.tokenized_output_tokens IS NOT NULL THEN 'tokenize'
            ELSE 'chunks' END AS token_source,
       u.usage_tokens AS usage_completion_tokens, r.tokenized_output_tokens
FROM requests r LEFT JOIN ev USING (request_id)
-- Shimmy 1.7.0 answers usage 0/0 whatever it generated: zero tokens for a
-- non-empty output is no count at all.
CROSS JOIN LATERAL (
    SELECT CASE WHEN r.usage_completion_tokens = 0 AND r.output_text <> '' THEN NULL
                ELSE r.usage_completion_tokens END AS usage_tokens
) u;

-- The gap before each content event (from the one before it): a stream's
-- inter-token latency as the reader sees it. Nothing is divided: an event that
-- carries several tokens (a server that batches) is one gap, and the tokens per
-- event (the server's count / content events) is reported beside the gaps, never
-- used to invent token times. A request with E content events has E - 1 gaps.
CREATE OR REPLACE TEMP VIEW event_gaps AS
WITH ch AS (
    SELECT request_id, idx, t_ns,
           t_ns - lag(t_ns) OVER (PARTITION BY request_id ORDER BY idx) AS gap_ns
    FROM content_chunks
)
SELECT request_id, idx AS event_idx, t_ns, gap_ns / 1e6 AS gap_ms
FROM ch WHERE gap_ns IS NOT NULL;

CREATE OR REPLACE TEMP VIEW request_itl AS
SELECT request_id,
       quantile_cont(gap_ms, 0.5) AS itl_p50_ms,
       quantile_cont(gap_ms, 0.9) AS itl_p90_ms,
       quantile_cont(gap_ms, 0.99) AS itl_p99_ms,
       max(gap_ms) AS max_stall_ms,
       CASE WHEN avg(gap_ms) > 0 THEN stddev_samp(gap_ms) / avg(gap_ms) END AS itl_cv,
       count(*) AS gaps
FROM event_gaps GROUP BY request_id;

-- Content events numbered along each request, to follow the rate along a long
-- generation (a rate of events x the request's tokens per event).
CREATE OR REPLACE TEMP VIEW event_times AS
SELECT c.request_id, c.t_ns, c.idx AS event_idx,
       count(*) OVER (PARTITION BY c.request_id) AS n_events,
       t.output_tokens / nullif(t.content_events, 0) AS tokens_per_event
FROM content_chunks c JOIN request_tokens t USING (request_id);

CREATE OR REPLACE TEMP VIEW request_consistency AS
WITH q AS (
    SELECT request_id, n_events,
           CASE WHEN event_idx < n_events // 4 THEN 'first'
                WHEN event_idx >= n_events - n_events // 4 THEN 'last' END AS quarter,
           t_ns
    FROM event_times WHERE n_events >= {consistency_min_tokens}
), rates AS (
    SELECT request_id, quarter, decode_rate(count(*), min(t_ns), max(t_ns)) AS rate
    FROM q WHERE quarter IS NOT NULL GROUP BY request_id, quarter
)
SELECT f.request_id, l.rate / nullif(f.rate, 0) AS consistency_ratio
FROM rates f JOIN rates l ON f.request_id = l.request_id
WHERE f.quarter = 'first' AND l.quarter = 'last';

-- Per telemetry sample, the cores busy with processes other than the server, its
-- device and the collector (METRICS['other_cpu_cores']). psutil's CPU figures
-- are averages since the previous sample, so each sample covers from_ns..t_ns.
CREATE OR REPLACE TEMP VIEW telemetry_other_cpu AS
SELECT t.server_run_id, t.t_ns,
       coalesce(lag(t.t_ns) OVER (PARTITION BY t.server_run_id ORDER BY t.t_ns), t.t_ns)
           AS from_ns,
       t.sys_cpu_percent * h.cpu_threads / 100
           - (t.cpu_percent + coalesce(t.device_cpu_percent, 0) + t.collector_cpu_percent)
             / 100 AS other_cores
FROM telemetry t
JOIN server_runs s USING (server_run_id)
JOIN campaigns cp USING (campaign_id)
JOIN hosts h USING (host_id);

-- Each request's time-weighted mean of those samples (a sample weighs the part of
-- the request its span covers), and the campaign's starvation threshold (its
-- config's [gates] max_other_cpu_cores, else the default).
-- A sample's span (from the sample before to it) covers a request where it overlaps
-- it: the samples taken inside the request (after its send, up to its end), and the
-- first one after its end, whose span began before the end. Both found by one ASOF
-- pass each (requests of a run are served one at a time), not by a range join.
CREATE OR REPLACE TEMP VIEW request_host_load AS
WITH inside AS (
    SELECT r.request_id, r.campaign_id, r.sent_ns, r.done_ns, o.t_ns, o.from_ns,
           o.other_cores
    FROM telemetry_other_cpu o
    ASOF JOIN requests r ON r.server_run_id = o.server_run_id AND o.t_ns > r.sent_ns
    WHERE o.t_ns <= r.done_ns
), after AS (
    SELECT r.request_id, r.campaign_id, r.sent_ns, r.done_ns, o.t_ns, o.from_ns,
           o.other_cores
    FROM requests r
    ASOF JOIN telemetry_other_cpu o ON o.server_run_id = r.server_run_id
         AND r.done_ns < o.t_ns
    WHERE o.from_ns < r.done_ns AND o.t_ns > r.sent_ns
), covered AS (
    SELECT request_id, campaign_id, other_cores,
           least(t_ns, done_ns) - greatest(from_ns, sent_ns) AS overlap_ns
    FROM (SELECT * FROM inside UNION ALL SELECT * FROM after)
    WHERE other_cores IS NOT NULL
)
SELECT c.request_id,
       -- (greatest() skips NULLs: test first, so a request with no weight stays NULL)
       CASE WHEN sum(c.overlap_ns) > 0
            THEN greatest(sum(c.other_cores * c.overlap_ns) / sum(c.overlap_ns), 0) END
           AS other_cpu_cores,
       count(*) AS host_load_samples,
       any_value(coalesce(TRY_CAST(json_extract(cp.config, '$.gates.max_other_cpu_cores')
                                   AS DOUBLE), {max_other_cpu_cores})) AS starved_above_cores
FROM covered c
JOIN campaigns cp USING (campaign_id)
GROUP BY c.request_id;

-- The model loads the server's log showed inside each request (collector.log_watch);
-- the last one's end is the end of the load(s) the request waited for.
CREATE OR REPLACE TEMP VIEW request_loads AS
SELECT request_id, count(*) AS loads,
       CASE WHEN count(last_line_ns) = count(*) THEN max(last_line_ns) END AS load_end_ns
FROM server_loads WHERE request_id IS NOT NULL
GROUP BY request_id;

-- Each telemetry sample in the request it was taken during (send to end, both
-- included): a server run serves one request at a time, so that is the last request
-- sent at or before the sample, if it had not ended yet (the collector sends a
-- request after the one before ended, never at the same nanosecond). One ASOF pass over the
-- time-ordered samples; a range join (sample time BETWEEN send and end) compared
-- every sample of a run with every request of it and grew with their product.
CREATE OR REPLACE TEMP VIEW request_samples AS
SELECT r.request_id, t.*
FROM telemetry t
ASOF JOIN requests r ON r.server_run_id = t.server_run_id AND t.t_ns >= r.sent_ns
WHERE t.t_ns <= r.done_ns;

-- Memory peaks over each request's own telemetry samples (send to end).
CREATE OR REPLACE TEMP VIEW request_peak_memory AS
SELECT request_id, max(rss_bytes) AS rss_peak, max(device_rss_bytes) AS dev_peak,
       max(gpu_mem_used_bytes) AS gpu_peak
FROM request_samples
GROUP BY request_id;

-- Per server run: the telemetry windows the memory figures are taken over.
CREATE OR REPLACE TEMP VIEW server_run_windows AS
SELECT s.server_run_id, s.ready_ns,
       s.ready_ns + CAST(1e9 * coalesce(
           TRY_CAST(json_extract(cp.config, '$.campaign.idle_window_s') AS DOUBLE), 1.0)
           AS BIGINT) AS idle_end_ns,
       min(r.sent_ns) AS gen_start_ns, max(r.done_ns) AS gen_end_ns,
       TRY_CAST(json_extract(s.gpu_before, '$.mem_used_bytes') AS BIGINT) AS gpu_before_bytes,
       TRY_CAST(json_extract(s.device, '$.mem_before_bytes') AS BIGINT) AS device_before_bytes,
       json_extract_string(s.device, '$.source') AS device_process_source
FROM server_runs s
JOIN campaigns cp USING (campaign_id)
LEFT JOIN requests r USING (server_run_id)
GROUP BY ALL;

-- One pass over the samples: each figure is an aggregate over its window.
CREATE OR REPLACE TEMP VIEW server_run_samples AS
SELECT w.server_run_id,
       median(t.rss_bytes) FILTER (t.t_ns BETWEEN w.ready_ns AND w.idle_end_ns) AS rss_idle,
       max(t.rss_bytes) FILTER (t.t_ns BETWEEN w.gen_start_ns AND w.gen_end_ns) AS rss_peak,
       median(t.gpu_mem_used_bytes) FILTER (t.t_ns BETWEEN w.ready_ns AND w.idle_end_ns)
           AS gpu_idle,
       max(t.gpu_mem_used_bytes) FILTER (t.t_ns BETWEEN w.gen_start_ns AND w.gen_end_ns)
           AS gpu_peak,
       max(t.gpu_proc_mem_bytes) AS gpu_proc_peak,
       median(t.device_rss_bytes) FILTER (t.t_ns BETWEEN w.ready_ns AND w.idle_end_ns)
           AS dev_idle,
       max(t.device_rss_bytes) FILTER (t.t_ns BETWEEN w.gen_start_ns AND w.gen_end_ns)
           AS dev_peak,
       avg(t.cpu_percent) FILTER (t.t_ns BETWEEN w.gen_start_ns AND w.gen_end_ns)
           AS cpu_generating,
       avg(t.device_cpu_percent) FILTER (t.t_ns BETWEEN w.gen_start_ns AND w.gen_end_ns)
           AS device_cpu_generating,
       count(t.t_ns) AS samples
FROM server_run_windows w LEFT JOIN telemetry t ON t.server_run_id = w.server_run_id
GROUP BY w.server_run_id;
"""

_DERIVED_VIEWS = """

-- Every offload configuration (n_cpu_moe -1 or K > 0) of a model with the
-- configuration it is compared with: the one labelled 'baseline' in the same
-- campaign, the reference of every comparison in the report.
CREATE OR REPLACE TEMP VIEW offload_configs AS
SELECT o.campaign_id, o.model_id, o.config_label, any_value(o.n_cpu_moe) AS n_cpu_moe,
       'baseline' AS baseline_label
FROM server_runs o
WHERE o.n_cpu_moe IS NOT NULL AND o.n_cpu_moe <> 0
  AND EXISTS (SELECT 1 FROM server_runs b WHERE b.campaign_id = o.campaign_id
              AND b.model_id = o.model_id AND b.config_label = 'baseline')
GROUP BY ALL;

-- Each request of an offload configuration with the baseline request of the
-- same model, test, repeat and streaming mode: the same prompt and seed, so a
-- difference is the offload's (the protocol's pairing).
CREATE OR REPLACE TEMP VIEW offload_pairs AS
SELECT o.campaign_id, o.model_id, o.config_label, o.test_id, o.repeat, o.stream,
       o.request_id AS offload_request_id, b.request_id AS baseline_request_id
FROM request_metrics o
JOIN offload_configs oc USING (campaign_id, model_id, config_label)
JOIN request_metrics b ON b.campaign_id = o.campaign_id AND b.model_id = o.model_id
     AND b.config_label = oc.baseline_label AND b.test_id = o.test_id
     AND b.repeat = o.repeat AND b.stream = o.stream;

-- The tests every configuration of a model ran with at least one completed
-- streamed request: where configurations (a sweep usually runs a subset) are
-- compared like for like.
CREATE OR REPLACE TEMP VIEW common_tests AS
SELECT campaign_id, model_id, test_id FROM request_metrics
WHERE stream AND completed
GROUP BY ALL
HAVING count(DISTINCT config_label) = (
    SELECT count(DISTINCT r2.config_label) FROM request_metrics r2
    WHERE r2.campaign_id = request_metrics.campaign_id
      AND r2.model_id = request_metrics.model_id);

-- Memory per (campaign, model, configuration), over its server runs that loaded.
CREATE OR REPLACE TEMP VIEW config_memory AS
SELECT s.campaign_id, s.model_id, s.config_label, any_value(s.n_cpu_moe) AS n_cpu_moe,
       avg(l.device_loaded_delta_bytes) AS gpu_measured_bytes,
       -- NULL when the runs measured their device differently.
       CASE WHEN count(DISTINCT m.device_source) <= 1 THEN any_value(m.device_source) END
           AS measured_source,
       avg(TRY_CAST(json_extract(s.log_summary, '$.gpu_total_mib') AS DOUBLE)) AS gpu_log_mib,
       avg(TRY_CAST(json_extract(s.log_summary, '$.cpu_mapped_mib') AS DOUBLE))
           AS cpu_mapped_mib,
       -- KV cache and compute buffers as the log printed them: on the device where
       -- the server used one, else on the CPU (which a GPU would hold instead).
       avg(coalesce(TRY_CAST(json_extract(s.log_summary, '$.gpu_kv_mib') AS DOUBLE),
                    TRY_CAST(json_extract(s.log_summary, '$.kv_mib') AS DOUBLE))) AS log_kv_mib,
       avg(coalesce(TRY_CAST(json_extract(s.log_summary, '$.gpu_compute_mib') AS DOUBLE),
                    TRY_CAST(json_extract(s.log_summary, '$.compute_mib') AS DOUBLE)))
           AS log_compute_mib,
       avg(m.rss_idle_bytes) AS rss_idle_bytes, max(m.rss_peak_bytes) AS rss_peak_bytes,
       -- NULL when the configuration's runs report different server builds.
       CASE WHEN count(DISTINCT s.version) <= 1 THEN any_value(s.version) END AS version,
       count(*) AS server_runs
FROM server_runs s JOIN server_run_memory m USING (server_run_id)
JOIN server_run_loads l USING (server_run_id)
WHERE s.ready_ns IS NOT NULL
GROUP BY ALL;

-- Per (campaign, model, configuration): did it load, did it not fit the device,
-- the device size it was held to, and the settings its device memory follows
-- (context and micro-batch as the server reported them, else as its command line
-- asked, else llama.cpp's defaults; whether the device computes host-resident
-- experts for prompt batches: CUDA's op offload does, the RPC device does not).
CREATE OR REPLACE TEMP VIEW config_fit AS
SELECT s.campaign_id, s.model_id, s.config_label, any_value(s.n_cpu_moe) AS n_cpu_moe,
       bool_or(s.ready_ns IS NOT NULL) AS loaded,
       bool_or(s.status = 'does_not_fit') AND NOT bool_or(s.ready_ns IS NOT NULL)
           AS does_not_fit,
       any_value(s.error) FILTER (WHERE s.status = 'does_not_fit') AS unfit_error,
       max(TRY_CAST(json_extract(s.device, '$.memory_bytes') AS BIGINT)) AS device_memory_bytes,
       coalesce(
           max(TRY_CAST(json_extract_string(s.log_summary, '$.settings.n_ctx') AS BIGINT)),
           max(TRY_CAST(argv_value(s.argv, '-c', '--ctx-size') AS BIGINT)),
           max(TRY_CAST(json_extract(md.spec, '$.context_length') AS BIGINT))) AS n_ctx,
       coalesce(
           max(TRY_CAST(json_extract_string(s.log_summary, '$.settings.n_ubatch') AS BIGINT)),
           max(TRY_CAST(argv_value(s.argv, '-ub', '--ubatch-size') AS BIGINT)),
           512) AS n_ubatch,
       NOT bool_or(json_extract_string(s.device, '$.kind') = 'rpc') AS op_offload
FROM server_runs s JOIN models md ON md.model_id = s.model_id
GROUP BY s.campaign_id, s.model_id, s.config_label;

-- The predicted device memory per configuration (METRICS['vram_saved_pct']'s
-- estimate, and `moe-evidence advise`'s): the GGUF weight bytes left on the device,
-- the KV cache and the compute buffer, from the model's shapes and the settings
-- alone (never from the log, so the log can check it). A store written before the
-- shapes were recorded has no KV or compute prediction: the log's buffers stand in.
CREATE OR REPLACE TEMP VIEW config_device_estimate AS
WITH p AS (
    SELECT f.campaign_id, f.model_id, f.config_label, f.n_ctx, f.n_ubatch, f.op_offload,
           device_weight_bytes(md.spec, f.n_cpu_moe) AS weights_gpu_bytes,
           kv_cache_bytes(md.spec, f.n_ctx) AS kv_predicted,
           compute_buffer_bytes(md.spec, f.n_ctx, f.n_ubatch, f.n_cpu_moe, f.op_offload)
               AS compute_predicted,
           (c.log_kv_mib * 1048576)::BIGINT AS kv_log,
           (c.log_compute_mib * 1048576)::BIGINT AS compute_log
    FROM config_fit f JOIN models md ON md.model_id = f.model_id
    LEFT JOIN config_memory c ON c.campaign_id = f.campaign_id AND c.model_id = f.model_id
         AND c.config_label = f.config_label
)
SELECT campaign_id, model_id, config_label, n_ctx, n_ubatch, weights_gpu_bytes,
       coalesce(kv_predicted, kv_log) AS kv_bytes,
       coalesce(compute_predicted, compute_log) AS compute_bytes,
       weights_gpu_bytes + coalesce(kv_predicted, kv_log, 0)
           + coalesce(compute_predicted, compute_log, 0) AS estimated_bytes,
       CASE WHEN kv_predicted IS NOT NULL AND compute_predicted IS NOT NULL
                THEN 'weights + KV + compute'
            WHEN kv_log IS NOT NULL AND compute_log IS NOT NULL
                THEN 'weights + log KV + log compute'
            ELSE 'weights only' END AS estimate_parts
FROM p;
"""


def views_sql(include_starved: bool = False, frozen: bool = False) -> str:
    """Every macro and view, in dependency order; with `include_starved`, requests
    starved by other processes count in the headline figures (`in_headline`).

    `frozen`: `request_metrics` is computed once into a TEMP table instead of a view,
    for a reader of a store that does not change while it reads (the site build):
    every figure of the site reads it, some many times, and a view is computed again
    at each read (the build's time grew with the number of queries x the store)."""
    inputs = _INPUT_VIEWS.replace("{consistency_min_tokens}", str(CONSISTENCY_MIN_TOKENS))
    inputs = inputs.replace(
        "{max_other_cpu_cores}", repr(DEFAULT_THRESHOLDS["max_other_cpu_cores"])
    )
    return "\n".join(
        (
            MACROS,
            inputs,
            _generated_view("request_metrics", _REQUEST_KEYS, _REQUEST_FROM, frozen).replace(
                "{include_starved}", "TRUE" if include_starved else "FALSE"
            ),
            _generated_view("server_run_memory", _MEMORY_KEYS, _MEMORY_FROM),
            _generated_view("server_run_loads", "s.server_run_id", _LOADS_FROM),
            _DERIVED_VIEWS,
            *(_owned_view(m) for m in _DEFS if m.owns_view),
        )
    )


def _owned_view(metric: Metric) -> str:
    """`CREATE VIEW` of a view a metric owns: its SQL is the view's SELECT."""
    return f"CREATE OR REPLACE TEMP VIEW {metric.view} AS\n{metric.sql.strip()};\n"


def create_views(
    con: duckdb.DuckDBPyConnection, include_starved: bool = False, frozen: bool = False
) -> None:
    """Create the metric macros and views on `con` (works on read-only connections);
    `include_starved` and `frozen` as in `views_sql`."""
    con.execute(views_sql(include_starved, frozen))


def group_sql(name: str) -> str:
    """The aggregate expression of a per-group metric (e.g. completion_rate)."""
    metric = METRICS[name]
    if not metric.aggregate:
        raise ValueError(f"{name} is not a per-group metric")
    return metric.sql


def weights_on_device(spec: Mapping[str, Any], n_cpu_moe: int | None) -> int | None:
    """GGUF weight bytes a configuration leaves on the device: the SQL macro
    `device_weight_bytes`, evaluated for a model inspection outside a store."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(MACROS)
        row = con.execute(
            "SELECT device_weight_bytes(?::JSON, ?)", [json.dumps(spec), n_cpu_moe]
        ).fetchone()
    finally:
        con.close()
    return None if row is None or row[0] is None else int(row[0])


def predicted_device_memory(
    spec: Mapping[str, Any], n_ctx: int, n_ubatch: int, ks: Sequence[int], op_offload: bool
) -> list[tuple[int, int | None, int | None, int | None]]:
    """(K, weights, KV cache, compute buffer) bytes on the device per `--n-cpu-moe K`:
    the SQL macros the store's estimate uses (`predicted_device_bytes`), evaluated for
    a model inspection outside a store (`moe-evidence advise`)."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(MACROS)
        found = con.execute(
            """
            SELECT k, device_weight_bytes(s, k), kv_cache_bytes(s, $ctx),
                   compute_buffer_bytes(s, $ctx, $ub, k, $offload)
            FROM (SELECT $spec::JSON AS s), unnest($ks::BIGINT[]) AS t(k) ORDER BY k
            """,
            {
                "spec": json.dumps(spec),
                "ctx": n_ctx,
                "ub": n_ubatch,
                "ks": list(ks),
                "offload": op_offload,
            },
        ).fetchall()
    finally:
        con.close()

    def size(value: Any) -> int | None:
        return None if value is None else int(value)

    return [(int(k), size(w), size(kv), size(c)) for k, w, kv, c in found]
