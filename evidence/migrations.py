"""The store's schema, as ordered migrations recorded in `schema_migrations`.

Each migration runs once, in order, inside the transaction that records it. The
store is a public interface (users query it; `docs/store.md` documents it), so
columns are only ever added, never renamed or retyped: add a new migration.

Conventions: ids are UUID strings (stores from several machines merge without
collisions); times are integer nanoseconds on the capturing process's monotonic
clock (`time.perf_counter_ns`), anchored to wall time per campaign by
`campaigns.clock_origin_ns` / `clock_origin_utc`; sizes are bytes unless the
column says `_mib` (figures copied as printed from a server log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[duckdb.DuckDBPyConnection], None]


def _initial(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE store_meta (
            key   VARCHAR PRIMARY KEY,
            value VARCHAR NOT NULL
        );

        -- One row per machine. host_id is a hash of stable hardware facts, so
        -- campaigns from the same box group together without personal data.
        CREATE TABLE hosts (
            host_id              VARCHAR PRIMARY KEY,
            hostname_hash        VARCHAR,
            cpu_model            VARCHAR,
            cpu_cores            INTEGER,
            cpu_threads          INTEGER,
            ram_bytes            BIGINT,
            os                   VARCHAR,
            os_release           VARCHAR,
            kernel               VARCHAR,
            machine              VARCHAR,
            gpus                 JSON,      -- [{name, memory_bytes, uuid_hash}] or []
            gpu_driver           VARCHAR,
            cuda_version         VARCHAR,
            gpu_status           VARCHAR    -- 'ok', or why GPU facts are absent
        );

        CREATE TABLE campaigns (
            campaign_id        VARCHAR PRIMARY KEY,
            host_id            VARCHAR NOT NULL,
            name               VARCHAR NOT NULL,
            release_label      VARCHAR,
            profile            VARCHAR NOT NULL,   -- default | quick | config
            protocol_version   VARCHAR NOT NULL,
            status             VARCHAR NOT NULL,   -- running | complete | interrupted | failed
            started_utc        TIMESTAMPTZ NOT NULL,
            finished_utc       TIMESTAMPTZ,
            clock_origin_ns    BIGINT NOT NULL,    -- perf_counter_ns() at clock_origin_utc
            clock_origin_utc   TIMESTAMPTZ NOT NULL,
            repeats            INTEGER NOT NULL,
            temperature        DOUBLE NOT NULL,
            seed               BIGINT,
            pause_s            DOUBLE NOT NULL,
            config             JSON NOT NULL,      -- the resolved config, secrets removed
            command            JSON NOT NULL,      -- argv of the collector
            tool_version       VARCHAR NOT NULL,
            packages           JSON NOT NULL,      -- {distribution: version}
            environment        JSON NOT NULL,      -- allowlisted variables only
            engine             JSON,               -- build identity of the embedded engine
            mem_bandwidth_bytes_per_s DOUBLE       -- host copy benchmark at campaign start
        );

        -- The protocol exactly as this campaign ran it (self-describing store).
        CREATE TABLE tests (
            campaign_id      VARCHAR NOT NULL,
            test_id          VARCHAR NOT NULL,
            ordinal          INTEGER NOT NULL,
            category         VARCHAR NOT NULL,
            prompt           VARCHAR NOT NULL,
            max_tokens       INTEGER NOT NULL,   -- as run (the quick profile caps it)
            protocol_max_tokens INTEGER NOT NULL,
            success_criteria VARCHAR NOT NULL,
            PRIMARY KEY (campaign_id, test_id)
        );

        CREATE TABLE models (
            model_id             VARCHAR PRIMARY KEY,
            campaign_id          VARCHAR NOT NULL,
            label                VARCHAR NOT NULL,  -- the config's name for it
            path                 VARCHAR NOT NULL,
            sha256               VARCHAR,
            file_bytes           BIGINT,
            architecture         VARCHAR,
            name                 VARCHAR,
            parameter_count      BIGINT,
            block_count          INTEGER,
            context_length       BIGINT,
            expert_count         INTEGER,
            expert_used_count    INTEGER,
            expert_shared_count  INTEGER,
            tensor_bytes_total   BIGINT,
            expert_tensor_count  INTEGER,
            expert_tensor_bytes  BIGINT,
            expected_vram_saved_pct DOUBLE,         -- from the config, for the gate
            spec                 JSON               -- full inspect-model output
        );

        CREATE TABLE server_runs (
            server_run_id   VARCHAR PRIMARY KEY,
            campaign_id     VARCHAR NOT NULL,
            model_id        VARCHAR NOT NULL,
            config_label    VARCHAR NOT NULL,   -- baseline | cpu-moe | n-cpu-moe-8 | ...
            n_cpu_moe       INTEGER,            -- NULL: no offload flag; -1: --cpu-moe (all)
            mode            VARCHAR NOT NULL,   -- launch | attach
            api             VARCHAR NOT NULL,   -- openai-chat | openai-completions | shimmy
            endpoint        VARCHAR NOT NULL,
            argv            JSON,               -- NULL when attached
            version         VARCHAR,            -- `--version` output
            pid             INTEGER,
            restart_of      VARCHAR,            -- server_run_id this one replaced after a crash
            started_utc     TIMESTAMPTZ NOT NULL,
            launch_ns       BIGINT,
            ready_ns        BIGINT,
            load_ms         DOUBLE,             -- launch to first healthy /health
            stopped_ns      BIGINT,
            exit_code       INTEGER,
            status          VARCHAR NOT NULL,   -- running | stopped | crashed | failed_start
            error           VARCHAR,
            log_text        VARCHAR,
            log_summary     JSON,               -- parsed loader log (collector.loader_log)
            gpu_before      JSON                -- device memory before launch (NVML), or NULL
        );

        CREATE TABLE requests (
            request_id              VARCHAR PRIMARY KEY,
            server_run_id           VARCHAR NOT NULL,
            campaign_id             VARCHAR NOT NULL,
            test_id                 VARCHAR NOT NULL,
            repeat                  INTEGER NOT NULL,
            stream                  BOOLEAN NOT NULL,
            api                     VARCHAR NOT NULL,
            prompt                  VARCHAR NOT NULL,
            max_tokens              INTEGER NOT NULL,
            temperature             DOUBLE NOT NULL,
            seed                    BIGINT,
            started_utc             TIMESTAMPTZ NOT NULL,
            status                  VARCHAR NOT NULL,  -- ok/timeout/http_error/disconnected/error
            http_status             INTEGER,
            error                   VARCHAR,
            finish_reason           VARCHAR,
            output_text             VARCHAR NOT NULL,
            sent_ns                 BIGINT NOT NULL,
            first_token_ns          BIGINT,            -- first event with non-empty content
            done_ns                 BIGINT,            -- [DONE], end of stream, or body complete
            usage_prompt_tokens     INTEGER,
            usage_completion_tokens INTEGER,
            server_timings          JSON,              -- llama.cpp `timings` object as sent
            tokenized_output_tokens INTEGER,           -- server /tokenize of output_text
            event_count             INTEGER NOT NULL
        );

        -- Every SSE event (or, non-streamed, the one body) with its arrival time.
        CREATE TABLE chunks (
            request_id VARCHAR NOT NULL,
            seq        INTEGER NOT NULL,
            t_ns       BIGINT NOT NULL,     -- same clock as requests.sent_ns
            text       VARCHAR NOT NULL,    -- content delta ('' for role/usage/done events)
            kind       VARCHAR NOT NULL     -- content|reasoning|role|usage|done|other
        );

        CREATE TABLE telemetry (
            server_run_id      VARCHAR NOT NULL,
            t_ns               BIGINT NOT NULL,
            proc_count         INTEGER,        -- processes in the server's tree
            rss_bytes          BIGINT,         -- server process tree RSS
            cpu_percent        DOUBLE,         -- server tree, 100 = one core
            sys_mem_used_bytes BIGINT,
            sys_cpu_percent    DOUBLE,         -- whole machine, 100 = all cores
            gpu_mem_used_bytes BIGINT,         -- all NVIDIA devices, device-wide
            gpu_proc_mem_bytes BIGINT,         -- the server tree's processes, per NVML
            gpu_util_percent   DOUBLE
        );

        CREATE TABLE scores (
            request_id     VARCHAR NOT NULL,
            name           VARCHAR NOT NULL,
            value          DOUBLE,
            detail         JSON,
            scorer_version VARCHAR NOT NULL,
            PRIMARY KEY (request_id, name)
        );

        CREATE TABLE gates (
            campaign_id    VARCHAR NOT NULL,
            gate_id        VARCHAR NOT NULL,
            title          VARCHAR NOT NULL,
            status         VARCHAR NOT NULL,  -- PASS | FAIL | NOT MEASURED
            threshold      VARCHAR NOT NULL,
            measured       VARCHAR NOT NULL,
            evidence       JSON,
            scorer_version VARCHAR NOT NULL,
            PRIMARY KEY (campaign_id, gate_id)
        );

        -- Human review (moe-evidence review): kept apart from automated scores.
        CREATE TABLE reviews (
            review_id   VARCHAR PRIMARY KEY,
            request_id  VARCHAR NOT NULL,
            score       INTEGER NOT NULL,
            note        VARCHAR,
            reviewer    VARCHAR,
            reviewed_utc TIMESTAMPTZ NOT NULL
        );

        -- Instrument validation figures (nox -s perf).
        CREATE TABLE perf_results (
            perf_run_id  VARCHAR NOT NULL,
            host_id      VARCHAR NOT NULL,
            measured_utc TIMESTAMPTZ NOT NULL,
            name         VARCHAR NOT NULL,
            value        DOUBLE,
            unit         VARCHAR NOT NULL,
            target       VARCHAR,
            passed       BOOLEAN,
            detail       JSON,
            PRIMARY KEY (perf_run_id, name)
        );
        """
    )


def _placement_checks(con: duckdb.DuckDBPyConnection) -> None:
    # Derived (recomputed by `rescore`): does the server's log show the expert
    # tensors the GGUF file has where the configuration says they should be?
    con.execute(
        """
        CREATE TABLE placement_checks (
            server_run_id    VARCHAR PRIMARY KEY,
            status           VARCHAR NOT NULL,  -- PASS | FAIL | NOT MEASURED
            expected_count   INTEGER,
            overridden_count INTEGER,
            missing          JSON,              -- expected on CPU, not overridden
            unexpected       JSON,              -- overridden, not expected
            message          VARCHAR NOT NULL,
            scorer_version   VARCHAR NOT NULL
        );
        """
    )


def _merge_log(con: duckdb.DuckDBPyConnection) -> None:
    # Where this store's rows came from: one row per merge or bundle import.
    con.execute(
        """
        CREATE TABLE merge_log (
            source_store_id VARCHAR,
            source          VARCHAR NOT NULL,
            merged_utc      TIMESTAMPTZ NOT NULL,
            added           JSON NOT NULL,     -- rows added per table
            conflicts       JSON NOT NULL      -- conflicting keys per table (kept target's)
        );
        """
    )


def _rpc_device(con: duckdb.DuckDBPyConnection) -> None:
    # llama.cpp's RPC device stands in for a GPU (collector.device): what it was,
    # its processes' memory over time, and its log, beside the server's.
    con.execute(
        """
        ALTER TABLE server_runs ADD COLUMN device JSON;
            -- {kind, source, rpc_servers: [{endpoint, launched, pid, threads, argv,
            --  exit_code}], mem_before_bytes}; NULL: no device besides what the
            -- server finds itself (a GPU, measured through NVML)
        ALTER TABLE server_runs ADD COLUMN device_log_text VARCHAR;
        ALTER TABLE telemetry ADD COLUMN device_rss_bytes BIGINT;   -- launched RPC devices
        ALTER TABLE telemetry ADD COLUMN device_cpu_percent DOUBLE; -- 100 = one core
        """
    )


def _lock(con: duckdb.DuckDBPyConnection) -> None:
    # The locked package set the campaign ran with (collector.inventory.lock_inventory).
    con.execute(
        """
        ALTER TABLE campaigns ADD COLUMN lock JSON;
            -- {file, sha256, pinned, differs: {name: {locked, installed}}}; NULL when
            -- the collector ran outside a checkout that has the lock file
        """
    )


def _tokenizer(con: duckdb.DuckDBPyConnection) -> None:
    # Servers that send no usage (Shimmy 1.7.0) are counted with the model's own
    # vocabulary offline: say which tokenizer gave requests.tokenized_output_tokens.
    con.execute(
        """
        ALTER TABLE requests ADD COLUMN tokenizer VARCHAR;
            -- 'server' (its /tokenize), 'llama-tokenize' (the engine's tool, vocab
            -- only, on the model file); NULL: nothing counted the output
        ALTER TABLE requests ADD COLUMN tokenizer_error VARCHAR;
            -- why nothing counted it (no llama-tokenize, no model file, it failed)
        """
    )


def _server_loads(con: duckdb.DuckDBPyConnection) -> None:
    # A server that loads the model per request (Shimmy 1.7.0) repeats its loader
    # log per request: each load, as the collector saw it appear in the log.
    con.execute(
        """
        CREATE TABLE server_loads (
            server_run_id VARCHAR NOT NULL,
            seq           INTEGER NOT NULL,   -- 0: the first load in the run's log
            request_id    VARCHAR,            -- the request it began in; NULL: start-up/warm-up
            first_line_ns BIGINT,             -- its first loader line seen (requests.sent_ns clock)
            last_line_ns  BIGINT,             -- its last loader line seen; NULL: never completed
            log_offset    BIGINT,             -- byte offset of its first line in the log as written
            PRIMARY KEY (server_run_id, seq)
        );
        """
    )


def _host_load(con: duckdb.DuckDBPyConnection) -> None:
    # Another process stealing the CPU mid-run slows the server: the collector's
    # own CPU, so that what neither it nor the server used is the others'.
    con.execute(
        """
        ALTER TABLE telemetry ADD COLUMN collector_cpu_percent DOUBLE;
            -- the collector process and its sampler, 100 = one core
        """
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", _initial),
    Migration(2, "placement_checks", _placement_checks),
    Migration(3, "merge_log", _merge_log),
    Migration(4, "rpc_device", _rpc_device),
    Migration(5, "lock", _lock),
    Migration(6, "tokenizer", _tokenizer),
    Migration(7, "server_loads", _server_loads),
    Migration(8, "host_load", _host_load),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
