"""Every metric, defined once: its SQL over the raw rows and its written definition.

The report renders `METRICS[...].definition` on the methodology page and
queries the views below for the numbers, so a definition cannot drift from the
figure it describes. Raw rows are never changed; a new definition is a new
view, and the site is rebuilt from the same store.

Views (TEMP, so they work on a read-only connection): `content_chunks`,
`token_gaps`, `request_metrics`, `server_run_memory`, `config_memory`,
`config_weight_estimate`, `vram_saved`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class Metric:
    name: str  # the column in its view
    title: str
    unit: str  # display unit
    definition: str
    view: str = "request_metrics"
    higher_is_better: bool | None = None


_DEFS: tuple[Metric, ...] = (
    Metric(
        "ttft_ms",
        "Time to first token",
        "ms",
        "Arrival of the first streamed event whose content is non-empty, minus the moment the "
        "request was sent; both on the collector's monotonic clock (perf_counter_ns). Streamed "
        "requests only: a non-streamed answer has no first token to time.",
        higher_is_better=False,
    ),
    Metric(
        "e2e_s",
        "End-to-end time",
        "s",
        "Arrival of `[DONE]` (or, if the stream ended without it, of the last event; "
        "non-streamed: of the complete body) minus the send time.",
        higher_is_better=False,
    ),
    Metric(
        "output_tokens",
        "Output tokens",
        "tokens",
        "The server's `usage.completion_tokens` when sent; else llama.cpp's "
        "`timings.predicted_n`; else the server's `/tokenize` count of the output text; else "
        "the number of content events, flagged as an estimate. `token_source` says which; "
        "`tokens_disagree` flags requests whose available sources differ by more than 10%.",
    ),
    Metric(
        "avg_tps",
        "Average tokens/s",
        "tokens/s",
        "Output tokens / end-to-end time in seconds: the protocol's definition, used in the "
        "summary table. It includes the time to first token (prompt processing and queueing).",
        higher_is_better=True,
    ),
    Metric(
        "decode_tps",
        "Decode tokens/s",
        "tokens/s",
        "(Output tokens - 1) / (arrival of the last content event - arrival of the first "
        "content event): the generation rate once the first token is out. Needs at least two "
        "content events.",
        higher_is_better=True,
    ),
    Metric(
        "itl_p50_ms",
        "Inter-token latency p50",
        "ms",
        "Gaps between consecutive content events, each divided over the tokens that event "
        "carries (a multi-token event is not one token): the median of those per-token gaps. "
        "An event carries one token when the request has at least as many content events as "
        "output tokens; otherwise its share is its share of the output characters, rounded "
        "(at least one).",
        higher_is_better=False,
    ),
    Metric(
        "itl_p90_ms",
        "Inter-token latency p90",
        "ms",
        "The 90th percentile of the per-token gaps defined for the p50.",
        higher_is_better=False,
    ),
    Metric(
        "itl_p99_ms",
        "Inter-token latency p99",
        "ms",
        "The 99th percentile of the per-token gaps defined for the p50.",
        higher_is_better=False,
    ),
    Metric(
        "max_stall_ms",
        "Longest stall",
        "ms",
        "The longest time between two consecutive content events (not divided by tokens): "
        "how long a reader stared at a frozen stream.",
        higher_is_better=False,
    ),
    Metric(
        "itl_cv",
        "Streaming steadiness (CV)",
        "",
        "Coefficient of variation (standard deviation / mean) of the per-token gaps; 0 is a "
        "perfectly steady stream. The protocol's 'streaming responsiveness' is reported as "
        "this figure with the ITL percentiles, not as a rating.",
        higher_is_better=False,
    ),
    Metric(
        "consistency_ratio",
        "Decode consistency (last/first quarter)",
        "",
        "Decode rate over the last quarter of a request's tokens divided by the rate over its "
        "first quarter (rate = tokens in the quarter - 1 over the time between its first and "
        "last token). Below 1: generation slowed down as the sequence grew. Requests with at "
        "least 16 tokens.",
        higher_is_better=True,
    ),
    Metric(
        "server_decode_tps",
        "Server-reported decode tokens/s",
        "tokens/s",
        "llama.cpp's own `timings.predicted_per_second` for the request, when the server sends it.",
        higher_is_better=True,
    ),
    Metric(
        "client_server_ratio",
        "Client/server decode ratio",
        "",
        "Client decode tokens/s divided by the server-reported decode tokens/s for the same "
        "request: how much of the engine's speed reaches the client (1.0 = all of it).",
    ),
    Metric(
        "completion_rate",
        "Completion rate",
        "%",
        "Requests that finished (status ok with finish reason `stop` or `length`: the "
        "`completed` column) / all requests of the group, streamed and not, in percent.",
        view="report",
        higher_is_better=True,
    ),
    Metric(
        "rss_idle_bytes",
        "Server RSS after load",
        "bytes",
        "Median resident set size of the server's process tree over the idle window that "
        "follows readiness (the collector waits `idle_window_s`, default 1 s, before the "
        "warm-up request).",
        view="server_run_memory",
        higher_is_better=False,
    ),
    Metric(
        "rss_peak_bytes",
        "Server RSS peak during generation",
        "bytes",
        "Highest resident set size of the server's process tree between the first recorded "
        "request's send and the last one's end, from the ~10 Hz telemetry samples.",
        view="server_run_memory",
        higher_is_better=False,
    ),
    Metric(
        "gpu_idle_delta_bytes",
        "GPU memory after load (measured)",
        "bytes",
        "NVML device memory in use, all NVIDIA devices, median over the idle window, minus the "
        "same figure sampled just before the server was launched.",
        view="server_run_memory",
        higher_is_better=False,
    ),
    Metric(
        "gpu_peak_delta_bytes",
        "GPU memory peak (measured)",
        "bytes",
        "Highest NVML device memory in use during generation minus the figure before launch.",
        view="server_run_memory",
        higher_is_better=False,
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
        higher_is_better=False,
    ),
    Metric(
        "device_peak_delta_bytes",
        "Device memory peak (measured)",
        "bytes",
        "The highest device memory sample during generation (first recorded request's send "
        "to the last one's end) minus the figure before launch; same sources as after load.",
        view="server_run_memory",
        higher_is_better=False,
    ),
    Metric(
        "vram_saved_pct",
        "VRAM saved",
        "%",
        "1 - offload / baseline device memory after load, in percent, for the same model in "
        "the same campaign (same host and build). Source, in order of preference, and the same "
        "source on both sides: measured (device memory after load minus before launch: NVML "
        "on a GPU, the RPC device process's resident memory on llama.cpp's RPC device), else "
        "log (the device buffers, model + KV + compute, the server's loader log printed), "
        "else estimated (the GGUF weight bytes that stay on the device plus the KV cache and "
        "compute buffers the log printed; weights only when there is no log). The source is "
        "always shown with the figure.",
        view="vram_saved",
        higher_is_better=True,
    ),
    Metric(
        "host_bytes_per_token",
        "Host weight bytes per token (estimated)",
        "bytes",
        "The weight bytes one decode step reads from host memory, from the GGUF file: with "
        "every weight in host memory (no GPU), the non-expert weights plus the active experts' "
        "share (expert tensor bytes x experts used / experts); with --cpu-moe on a GPU host, "
        "the active experts' share only. An upper bound: an embedding lookup reads one row.",
        view="report",
    ),
    Metric(
        "implied_host_traffic",
        "Implied host memory traffic (estimated)",
        "bytes/s",
        "Mean decode tokens/s x host weight bytes per token. Compared with the host copy "
        "bandwidth the collector measured at campaign start (best of 5 numpy copies of a "
        "256 MiB buffer, bytes read + written), it shows whether decoding is bound by memory "
        "bandwidth: near 100 % it is; far below with the CPU busy, it is compute- or "
        "overhead-bound.",
        view="report",
    ),
    Metric(
        "predicted_decode_tps",
        "Predicted decode tokens/s (offload speed model)",
        "tokens/s",
        "A roofline over the bytes each decode step reads, calibrated on measured rates: per "
        "token the device reads D(K) bytes (the non-expert weights plus the active share, "
        "experts used / experts, of the expert tensors left on it) and the host H(K) (the "
        "active share of the expert tensors of the K blocks kept in CPU memory), both from "
        "the GGUF file. The device's rate is measured on the runs with no expert on the CPU "
        "(D(0) x decode tokens/s), the host's on the runs with every expert there; the "
        "prediction for any K is 1 / (D(K)/device rate + H(K)/host rate). Those two kinds of "
        "run are the calibration points (error 0 by construction); the error of the others "
        "(measured / predicted - 1) tests the model. Decode means over the tests every "
        "configuration of the model ran.",
        view="decode_prediction",
        higher_is_better=True,
    ),
    Metric(
        "decode_rate_along_generation",
        "Decode rate along the generation",
        "tokens/s",
        "Long tests (category 'extended generation') only: each request's tokens are cut into "
        "tenths; the rate in a tenth is (tokens in it - 1) / the time between its first and "
        "last token. The chart shows the mean over requests per tenth.",
        view="report",
    ),
)

METRICS: dict[str, Metric] = {m.name: m for m in _DEFS}

_VIEWS = """
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
       coalesce(r.usage_completion_tokens,
                TRY_CAST(json_extract(r.server_timings, '$.predicted_n') AS BIGINT),
                r.tokenized_output_tokens,
                ev.content_events, 0) AS output_tokens,
       CASE WHEN r.usage_completion_tokens IS NOT NULL THEN 'usage'
            WHEN json_extract(r.server_timings, '$.predicted_n') IS NOT NULL THEN 'timings'
            WHEN r.tokenized_output_tokens IS NOT NULL THEN 'tokenize'
            ELSE 'chunks' END AS token_source,
       r.usage_completion_tokens, r.tokenized_output_tokens
FROM requests r LEFT JOIN ev USING (request_id);

-- One row per output token of a streamed request, with its share of the gap
-- before the event that carried it.
CREATE OR REPLACE TEMP VIEW token_gaps AS
WITH ch AS (
    SELECT c.request_id, c.idx, c.t_ns, c.chars,
           c.t_ns - lag(c.t_ns) OVER (PARTITION BY c.request_id ORDER BY c.idx) AS gap_ns,
           CASE WHEN t.content_events >= t.output_tokens OR t.content_chars = 0 THEN 1
                ELSE greatest(1, round(t.output_tokens * c.chars / t.content_chars))::BIGINT
           END AS tokens
    FROM content_chunks c JOIN request_tokens t USING (request_id)
)
SELECT request_id, idx AS event_idx, t_ns, tokens AS event_tokens,
       gap_ns / 1e6 AS event_gap_ms, gap_ns / 1e6 / tokens AS gap_ms,
       unnest(range(tokens)) AS token_in_event
FROM ch WHERE gap_ns IS NOT NULL;

CREATE OR REPLACE TEMP VIEW request_itl AS
SELECT request_id,
       quantile_cont(gap_ms, 0.5) AS itl_p50_ms,
       quantile_cont(gap_ms, 0.9) AS itl_p90_ms,
       quantile_cont(gap_ms, 0.99) AS itl_p99_ms,
       max(event_gap_ms) AS max_stall_ms,
       CASE WHEN avg(gap_ms) > 0 THEN stddev_samp(gap_ms) / avg(gap_ms) END AS itl_cv
FROM token_gaps GROUP BY request_id;

-- Token arrival times (each token of a multi-token event arrives with it),
-- numbered, to compare the first and last quarter of a long generation.
CREATE OR REPLACE TEMP VIEW token_times AS
WITH ch AS (
    SELECT c.request_id, c.idx, c.t_ns,
           CASE WHEN t.content_events >= t.output_tokens OR t.content_chars = 0 THEN 1
                ELSE greatest(1, round(t.output_tokens * c.chars / t.content_chars))::BIGINT
           END AS tokens
    FROM content_chunks c JOIN request_tokens t USING (request_id)
), expanded AS (
    SELECT request_id, idx, t_ns, unnest(range(tokens)) AS k FROM ch
)
SELECT request_id, t_ns,
       row_number() OVER (PARTITION BY request_id ORDER BY idx, k) - 1 AS token_idx,
       count(*) OVER (PARTITION BY request_id) AS n_tokens
FROM expanded;

CREATE OR REPLACE TEMP VIEW request_consistency AS
WITH q AS (
    SELECT request_id, n_tokens,
           CASE WHEN token_idx < n_tokens // 4 THEN 'first'
                WHEN token_idx >= n_tokens - n_tokens // 4 THEN 'last' END AS quarter,
           t_ns
    FROM token_times WHERE n_tokens >= 16
), rates AS (
    SELECT request_id, quarter,
           (count(*) - 1) / nullif((max(t_ns) - min(t_ns)) / 1e9, 0) AS rate
    FROM q WHERE quarter IS NOT NULL GROUP BY request_id, quarter
)
SELECT f.request_id, l.rate / nullif(f.rate, 0) AS consistency_ratio
FROM rates f JOIN rates l ON f.request_id = l.request_id
WHERE f.quarter = 'first' AND l.quarter = 'last';

CREATE OR REPLACE TEMP VIEW request_metrics AS
SELECT r.request_id, r.campaign_id, r.server_run_id, s.model_id, m.label AS model_label,
       s.config_label, s.n_cpu_moe, r.test_id, r.repeat, r.stream, r.status, r.finish_reason,
       (r.status = 'ok' AND r.finish_reason IN ('stop', 'length')) AS completed,
       CASE WHEN r.stream AND r.first_token_ns IS NOT NULL
            THEN (r.first_token_ns - r.sent_ns) / 1e6 END AS ttft_ms,
       (r.done_ns - r.sent_ns) / 1e9 AS e2e_s,
       t.output_tokens, t.token_source,
       (t.token_source = 'chunks') AS tokens_estimated,
       (greatest(r.usage_completion_tokens, t.timings_tokens, r.tokenized_output_tokens)
          > 1.10 * least(r.usage_completion_tokens, t.timings_tokens, r.tokenized_output_tokens)
       ) AS tokens_disagree,
       CASE WHEN r.done_ns > r.sent_ns
            THEN t.output_tokens / ((r.done_ns - r.sent_ns) / 1e9) END AS avg_tps,
       CASE WHEN r.stream AND t.output_tokens > 1 AND t.last_content_ns > t.first_content_ns
            THEN (t.output_tokens - 1) / ((t.last_content_ns - t.first_content_ns) / 1e9)
       END AS decode_tps,
       i.itl_p50_ms, i.itl_p90_ms, i.itl_p99_ms, i.max_stall_ms, i.itl_cv,
       c.consistency_ratio,
       t.server_decode_tps,
       CASE WHEN r.stream AND t.server_decode_tps > 0 AND t.output_tokens > 1
                 AND t.last_content_ns > t.first_content_ns
            THEN ((t.output_tokens - 1) / ((t.last_content_ns - t.first_content_ns) / 1e9))
                 / t.server_decode_tps END AS client_server_ratio,
       t.content_events, r.sent_ns, r.done_ns
FROM requests r
JOIN server_runs s USING (server_run_id)
JOIN models m ON m.model_id = s.model_id
JOIN request_tokens t USING (request_id)
LEFT JOIN request_itl i USING (request_id)
LEFT JOIN request_consistency c USING (request_id);

CREATE OR REPLACE TEMP VIEW server_run_memory AS
WITH win AS (
    SELECT s.server_run_id, s.ready_ns,
           s.ready_ns + CAST(1e9 * coalesce(
               TRY_CAST(json_extract(cp.config, '$.campaign.idle_window_s') AS DOUBLE), 1.0)
               AS BIGINT) AS idle_end_ns,
           min(r.sent_ns) AS gen_start_ns, max(r.done_ns) AS gen_end_ns,
           TRY_CAST(json_extract(s.gpu_before, '$.mem_used_bytes') AS BIGINT) AS gpu_before_bytes,
           TRY_CAST(json_extract(s.device, '$.mem_before_bytes') AS BIGINT)
               AS device_before_bytes,
           json_extract_string(s.device, '$.source') AS device_process_source
    FROM server_runs s
    JOIN campaigns cp USING (campaign_id)
    LEFT JOIN requests r USING (server_run_id)
    GROUP BY ALL
), agg AS (
    -- One pass over the samples: each figure is an aggregate over its window.
    SELECT w.server_run_id,
           median(t.rss_bytes) FILTER (t.t_ns BETWEEN w.ready_ns AND w.idle_end_ns)
               AS rss_idle,
           max(t.rss_bytes) FILTER (t.t_ns BETWEEN w.gen_start_ns AND w.gen_end_ns)
               AS rss_peak,
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
    FROM win w LEFT JOIN telemetry t ON t.server_run_id = w.server_run_id
    GROUP BY w.server_run_id
)
SELECT w.server_run_id,
       a.rss_idle::BIGINT AS rss_idle_bytes,
       a.rss_peak AS rss_peak_bytes,
       a.gpu_idle::BIGINT - w.gpu_before_bytes AS gpu_idle_delta_bytes,
       a.gpu_peak - w.gpu_before_bytes AS gpu_peak_delta_bytes,
       a.gpu_proc_peak AS gpu_proc_peak_bytes,
       -- The device's memory, one definition for every kind of device: after load
       -- (median over the idle window) or peak (during generation), minus the
       -- figure before the server was launched. A launched RPC device is measured
       -- as its processes' resident memory; a GPU through NVML.
       CASE WHEN w.device_process_source IS NOT NULL THEN w.device_process_source
            WHEN a.gpu_idle IS NOT NULL OR a.gpu_peak IS NOT NULL THEN 'NVML' END
           AS device_source,
       CASE WHEN w.device_process_source IS NOT NULL
            THEN a.dev_idle::BIGINT - w.device_before_bytes
            ELSE a.gpu_idle::BIGINT - w.gpu_before_bytes END AS device_idle_delta_bytes,
       CASE WHEN w.device_process_source IS NOT NULL
            THEN a.dev_peak - w.device_before_bytes
            ELSE a.gpu_peak - w.gpu_before_bytes END AS device_peak_delta_bytes,
       a.dev_idle::BIGINT AS device_rss_idle_bytes,
       a.dev_peak AS device_rss_peak_bytes,
       w.device_before_bytes,
       a.cpu_generating AS cpu_percent_avg_generating,
       a.device_cpu_generating AS device_cpu_percent_avg_generating,
       a.samples AS telemetry_samples
FROM win w JOIN agg a USING (server_run_id);

-- Memory per (campaign, model, configuration), over its server runs that loaded.
CREATE OR REPLACE TEMP VIEW config_memory AS
SELECT s.campaign_id, s.model_id, s.config_label, any_value(s.n_cpu_moe) AS n_cpu_moe,
       avg(m.device_idle_delta_bytes) AS gpu_measured_bytes,
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
WHERE s.ready_ns IS NOT NULL
GROUP BY ALL;

-- The predicted device memory per configuration: the GGUF weight bytes that stay
-- on the device (the file's, not the log's rounded sizes) plus the KV cache and
-- compute buffers the loader log printed; weights only when there is no log.
CREATE OR REPLACE TEMP VIEW config_weight_estimate AS
WITH w AS (
    SELECT c.campaign_id, c.model_id, c.config_label, c.log_kv_mib, c.log_compute_mib,
           TRY_CAST(json_extract(md.spec, '$.tensor_bytes_total') AS BIGINT) - CASE
               WHEN c.n_cpu_moe IS NULL OR c.n_cpu_moe = 0 THEN 0
               WHEN c.n_cpu_moe < 0 THEN TRY_CAST(json_extract(md.spec, '$.expert_tensor_bytes')
                                                  AS BIGINT)
               -- --n-cpu-moe K: the experts of layers 0..K-1; unknown (NULL) when the
               -- inspection recorded no per-layer breakdown, 0 when no MoE layer is < K.
               WHEN json_extract(md.spec, '$.expert_bytes_by_layer') IS NULL THEN NULL
               ELSE coalesce(list_sum(list_transform(list_filter(
                        TRY_CAST(json_extract(md.spec, '$.expert_bytes_by_layer') AS BIGINT[][]),
                        lambda x: x[1] < c.n_cpu_moe), lambda x: x[2])), 0)
           END AS weights_gpu_bytes
    FROM config_memory c JOIN models md USING (model_id)
)
SELECT campaign_id, model_id, config_label, weights_gpu_bytes,
       (log_kv_mib * 1048576)::BIGINT AS kv_bytes,
       (log_compute_mib * 1048576)::BIGINT AS compute_bytes,
       weights_gpu_bytes + coalesce((log_kv_mib * 1048576)::BIGINT, 0)
           + coalesce((log_compute_mib * 1048576)::BIGINT, 0) AS estimated_bytes,
       CASE WHEN log_kv_mib IS NOT NULL AND log_compute_mib IS NOT NULL
            THEN 'weights + KV + compute' ELSE 'weights only' END AS estimate_parts
FROM w;

-- VRAM saved per offload configuration (n_cpu_moe -1 or K > 0) against the same
-- model's configuration labelled 'baseline' in the same campaign (the reference
-- of every comparison in the report). Each source's saving
-- where both sides have it; the headline (`source`, `vram_saved_pct`) is the
-- best of them: measured > log > estimated. Measured figures compare only runs
-- of one server build (one campaign is one host by construction).
CREATE OR REPLACE TEMP VIEW vram_saved AS
WITH sized AS (
    SELECT c.*, e.estimated_bytes, e.estimate_parts
    FROM config_memory c JOIN config_weight_estimate e USING (campaign_id, model_id, config_label)
), reference AS (
    SELECT * FROM sized WHERE config_label = 'baseline'
), pairs AS (
    SELECT o.campaign_id, o.model_id, o.config_label, o.n_cpu_moe,
           b.config_label AS baseline_label,
           b.gpu_measured_bytes AS b_measured, o.gpu_measured_bytes AS o_measured,
           b.gpu_log_mib * 1048576 AS b_log, o.gpu_log_mib * 1048576 AS o_log,
           b.estimated_bytes AS b_est, o.estimated_bytes AS o_est,
           o.estimate_parts,
           b.version IS NOT NULL AND b.version = o.version
               AND b.measured_source IS NOT DISTINCT FROM o.measured_source AS same_build,
           coalesce(o.measured_source, b.measured_source) AS measured_source
    FROM sized o JOIN reference b USING (campaign_id, model_id)
    WHERE o.n_cpu_moe <> 0
), pcts AS (
    SELECT *,
           CASE WHEN b_measured > 0 AND o_measured IS NOT NULL AND same_build
                THEN 100 * (1 - o_measured / b_measured) END AS measured_pct,
           CASE WHEN b_log > 0 AND o_log IS NOT NULL
                THEN 100 * (1 - o_log / b_log) END AS log_pct,
           CASE WHEN b_est > 0 AND o_est IS NOT NULL
                THEN 100 * (1 - o_est / b_est) END AS estimated_pct
    FROM pairs
), chosen AS (
    SELECT *,
           CASE WHEN measured_pct IS NOT NULL THEN 'measured'
                WHEN log_pct IS NOT NULL THEN 'log'
                WHEN estimated_pct IS NOT NULL THEN 'estimated' END AS source
    FROM pcts
)
SELECT campaign_id, model_id, config_label, n_cpu_moe, baseline_label, source,
       measured_source, estimate_parts,
       CASE source WHEN 'measured' THEN b_measured WHEN 'log' THEN b_log
                   WHEN 'estimated' THEN b_est END AS baseline_bytes,
       CASE source WHEN 'measured' THEN o_measured WHEN 'log' THEN o_log
                   WHEN 'estimated' THEN o_est END AS offload_bytes,
       coalesce(measured_pct, log_pct, estimated_pct) AS vram_saved_pct,
       measured_pct, log_pct, estimated_pct, same_build,
       b_measured, o_measured, b_log, o_log, b_est, o_est
FROM chosen;

-- The offload speed model: per token, decoding streams the weights it reads at
-- the rate each side achieves. Bytes per token from the GGUF file: D(K) on the
-- device = the non-expert weights + the active share (experts used / experts) of
-- the expert tensors left there; H(K) on the host = the active share of the
-- expert tensors of the K blocks kept in CPU memory. Rates measured, not assumed:
-- the device's from the runs with no expert on the CPU (r_d = D(0) x decode),
-- the host's from the runs with every expert there (H / (1/decode - D/r_d)).
-- Predicted decode for every K: 1 / (D(K)/r_d + H(K)/r_h). Decode means are over
-- the tests every configuration of the model ran (streamed, status ok).
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

CREATE OR REPLACE TEMP VIEW decode_prediction AS
WITH cfg AS (
    SELECT o.campaign_id, o.model_id, o.config_label, any_value(o.n_cpu_moe) AS n_cpu_moe,
           avg(o.decode_tps) AS decode_tps, count(o.decode_tps) AS n
    FROM request_metrics o JOIN common_tests USING (campaign_id, model_id, test_id)
    WHERE o.stream AND o.completed
    GROUP BY ALL
    HAVING count(o.decode_tps) > 0
), sized AS (
    SELECT c.*,
           TRY_CAST(json_extract(md.spec, '$.tensor_bytes_total') AS BIGINT) AS total_b,
           TRY_CAST(json_extract(md.spec, '$.expert_tensor_bytes') AS BIGINT) AS experts_b,
           md.expert_used_count / nullif(md.expert_count, 0) AS active,
           CASE WHEN c.n_cpu_moe IS NULL OR c.n_cpu_moe = 0 THEN 0
                WHEN c.n_cpu_moe < 0
                    THEN TRY_CAST(json_extract(md.spec, '$.expert_tensor_bytes') AS BIGINT)
                ELSE coalesce(list_sum(list_transform(list_filter(
                        TRY_CAST(json_extract(md.spec, '$.expert_bytes_by_layer') AS BIGINT[][]),
                        lambda x: x[1] < c.n_cpu_moe), lambda x: x[2])), 0)
           END AS host_experts_b
    FROM cfg c JOIN models md USING (model_id)
), per_token AS (
    SELECT *,
           (total_b - experts_b) + (experts_b - host_experts_b) * active AS device_bytes,
           host_experts_b * active AS host_bytes,
           host_experts_b = experts_b AND experts_b > 0 AS all_on_host
    FROM sized WHERE active IS NOT NULL AND total_b IS NOT NULL AND experts_b IS NOT NULL
), device_rate AS (
    SELECT campaign_id, model_id, avg(device_bytes * decode_tps) AS r_d
    FROM per_token WHERE host_bytes = 0 GROUP BY ALL
), host_rate AS (
    SELECT p.campaign_id, p.model_id,
           avg(p.host_bytes / nullif(1 / p.decode_tps - p.device_bytes / d.r_d, 0)) AS r_h
    FROM per_token p JOIN device_rate d USING (campaign_id, model_id)
    WHERE p.all_on_host GROUP BY ALL
)
SELECT p.campaign_id, p.model_id, p.config_label, p.n_cpu_moe, p.n, p.decode_tps,
       p.device_bytes, p.host_bytes, d.r_d AS device_rate_bytes_per_s,
       h.r_h AS host_rate_bytes_per_s,
       (p.host_bytes = 0 OR p.all_on_host) AS calibration_point,
       CASE WHEN h.r_h > 0 THEN 1 / (p.device_bytes / d.r_d + p.host_bytes / h.r_h) END
           AS predicted_decode_tps,
       CASE WHEN h.r_h > 0
            THEN p.decode_tps * (p.device_bytes / d.r_d + p.host_bytes / h.r_h) - 1 END
           AS prediction_error
FROM per_token p
LEFT JOIN device_rate d USING (campaign_id, model_id)
LEFT JOIN host_rate h USING (campaign_id, model_id);
"""


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create the metric views on `con` (works on read-only connections)."""
    con.execute(_VIEWS)


# Two-sided 95% critical values of Student's t by degrees of freedom; beyond 30
# the normal value 1.96 is within 2% and is used.
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t95(df: int) -> float:
    """Two-sided 95% Student t critical value for `df` degrees of freedom."""
    if df < 1:
        return math.nan
    return _T95[df - 1] if df <= len(_T95) else 1.96


@dataclass(frozen=True)
class Summary:
    """N, mean, spread and 95% confidence interval of one metric in one group."""

    n: int
    mean: float | None
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    min: float | None
    max: float | None


def summarize(
    n: int, mean: float | None, sd: float | None, lo: float | None, hi: float | None
) -> Summary:
    """Attach the t-based 95% CI of the mean (none for N < 2)."""
    if n >= 2 and mean is not None and sd is not None:
        half = t95(n - 1) * sd / math.sqrt(n)
        return Summary(n, mean, sd, mean - half, mean + half, lo, hi)
    return Summary(n, mean, sd, None, None, lo, hi)


def aggregate_sql(
    column: str, group_cols: list[str], source: str = "request_metrics", where: str = "TRUE"
) -> str:
    """SQL giving n, mean, sd, min, max of `column` per group (CI: see `summarize`)."""
    groups = ", ".join(group_cols)
    select_groups = f"{groups}, " if groups else ""
    group_by = f"GROUP BY {groups} ORDER BY {groups}" if groups else ""
    return (
        f"SELECT {select_groups}count({column}) AS n, avg({column}) AS mean, "
        f"stddev_samp({column}) AS sd, min({column}) AS min, max({column}) AS max "
        f"FROM {source} WHERE ({where}) AND {column} IS NOT NULL {group_by}"
    )


@dataclass(frozen=True)
class Ratio:
    """Ratio of two means with a delta-method 95% CI."""

    ratio: float | None
    ci_low: float | None
    ci_high: float | None


def ratio_of_means(a: Summary, b: Summary) -> Ratio:
    """mean(a) / mean(b), e.g. offload / baseline, with a 95% CI computed on the
    log scale (delta method, independent samples), so it stays positive:
    se(ln r) = sqrt(sd_a²/(n_a·mean_a²) + sd_b²/(n_b·mean_b²)), CI = r·exp(±t·se),
    t at the smaller sample's degrees of freedom."""
    if a.mean is None or b.mean is None or b.mean == 0 or a.n < 1 or b.n < 1:
        return Ratio(None, None, None)
    r = a.mean / b.mean
    if a.n < 2 or b.n < 2 or a.sd is None or b.sd is None or a.mean <= 0 or b.mean <= 0:
        return Ratio(r, None, None)
    se = math.sqrt((a.sd**2) / (a.n * a.mean**2) + (b.sd**2) / (b.n * b.mean**2))
    factor = math.exp(t95(min(a.n, b.n) - 1) * se)
    return Ratio(r, r / factor, r * factor)
