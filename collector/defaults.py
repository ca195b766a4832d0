"""The embedded default campaign: no GPU, no model hub, no config file.

llama.cpp's llama-server built from PyPI source (collector.engine) serves a
small MoE upcycled from SmolLM2-135M-Instruct (collector.upcycle), in two
configurations: every layer on the device (`baseline`) and the expert tensors
kept in the server's CPU memory (`cpu-moe`), plus a `--n-cpu-moe K` sweep.

The device is llama.cpp's RPC device (collector.device): a fresh
`ggml-rpc-server` process per server run stands in for the GPU, so the expert
tensors really leave the device and the device's memory is measured as that
process's resident memory. `--device none` runs without it: then both
configurations keep every weight in the same RAM and the run proves the
pipeline and the placement, not a saving.
"""

from __future__ import annotations

from typing import Literal

from collector import config as cfg
from collector.device import default_threads

# Placeholders a server command may use; filled per server start.
PLACEHOLDERS = (
    "{llama_server}",  # the embedded engine's llama-server binary
    "{model_path}",
    "{model_dir}",
    "{model_name}",
    "{host}",
    "{port}",
    "{rpc}",  # the server run's RPC devices, HOST:PORT,... ([device] kind = "rpc")
)

EMBEDDED_MODEL_LABEL = "smollm2-moe-4x2"
EMBEDDED_EXPERTS = 4
EMBEDDED_EXPERTS_USED = 2
EMBEDDED_SEED = 0

# The longest protocol test asks for 1000 tokens; with the chat template and
# prompt that fits 2048 with room to spare. An explicit size: b11434's default
# `--fit on` may shrink an unset context to fit device memory.
EMBEDDED_CONTEXT = 2048

# -lv 5: llama-server then logs buffer sizes and every tensor override, which
# the offload evidence parses. -np 1: one slot, so no request ever waits on
# another and KV memory is that of one sequence. -fit off: b11434's default
# `--fit on` adjusts unset arguments to fit device memory and can move expert
# tensors off the device in a *baseline* run; a fair A/B sets everything itself.
# -ngl 99: every layer on the device (none is there without a device).
LLAMA_SERVER_COMMAND = [
    "{llama_server}",
    "-m",
    "{model_path}",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "-np",
    "1",
    "-c",
    str(EMBEDDED_CONTEXT),
    "-fit",
    "off",
    "-ngl",
    "99",
    "-lv",
    "5",
]

# The curve's probe prompts and answers, in tokens. The long prompt is half the
# context, not most of it: prefill runs at ~80 tokens/s on one core here, and 21
# probes of 1.5k tokens would add 7 minutes to the default campaign.
SWEEP_PROMPT_TOKENS = (128, 1024)
SWEEP_DECODE_TOKENS = 64
# The smoke profile's sweep: at most this many K (the ends among them), one repeat,
# and the probe prompts scaled so the longest is this long.
QUICK_SWEEP_POINTS = 4
QUICK_LONGEST_PROMPT = 128

DeviceKind = Literal["none", "rpc"]

# The offload configuration: every expert tensor kept in the server's CPU memory.
CPU_MOE = cfg.Configuration(label="cpu-moe", args=["--cpu-moe"], n_cpu_moe=-1)


def embedded_config(device: DeviceKind = "rpc", cores: int | None = None) -> cfg.Config:
    """The default campaign: both configurations, N=3, 5 s pauses, protocol budgets,
    on llama.cpp's RPC device (`device="none"`: the server's CPU only)."""
    device_threads, server_threads = default_threads(cores)
    if device == "none":
        device_threads, server_threads = 0, device_threads + server_threads
    where = "an RPC device" if device == "rpc" else "CPU only"
    return cfg.Config(
        campaign=cfg.CampaignSection(
            name=f"Embedded default: SmolLM2-135M MoE 4x (top-2) on llama.cpp b11434, {where}"
        ),
        server=cfg.ServerSection(
            mode="launch",
            command=[*LLAMA_SERVER_COMMAND, "-t", str(server_threads)],
            api="openai-chat",
        ),
        device=cfg.DeviceSection(kind=device, threads=device_threads or None),
        models=[cfg.ModelEntry(label=EMBEDDED_MODEL_LABEL, path=None)],
        configurations=[
            cfg.Configuration(label="baseline"),
            CPU_MOE,
        ],
        # The --n-cpu-moe trade-off curve ("Choosing K"): K of the 30 MoE blocks keep
        # their experts on the CPU (0 = none, 30 = all), every fifth K, N = 3 speed
        # probes at each (collector.probes): prefill of a short prompt and of one half
        # the context, then decode after each.
        sweep=cfg.SweepSection(
            n_cpu_moe=list(range(0, 31, 5)),
            tests=[],
            repeats=3,
            prompt_tokens=list(SWEEP_PROMPT_TOKENS),
            decode_tokens=SWEEP_DECODE_TOKENS,
        ),
    )


def quick_profile(config: cfg.Config) -> cfg.Config:
    """Apply the smoke profile to any config (1 repeat, 32-token cap, no pauses; a
    sweep thinned to a few K with short probes)."""
    campaign = config.campaign.model_copy(
        update={"repeats": 1, "pause_s": 0.0, "max_tokens_cap": 32}
    )
    update: dict[str, object] = {"campaign": campaign}
    if config.sweep is not None:
        update["sweep"] = quick_sweep(config.sweep)
    return config.model_copy(update=update)


def quick_sweep(sweep: cfg.SweepSection) -> cfg.SweepSection:
    """At most QUICK_SWEEP_POINTS K, evenly spaced in the list and keeping both ends;
    one repeat; probe prompts scaled down so the longest is QUICK_LONGEST_PROMPT."""
    ks = sweep.n_cpu_moe
    if len(ks) > QUICK_SWEEP_POINTS:
        step = (len(ks) - 1) / (QUICK_SWEEP_POINTS - 1)
        ks = [ks[round(i * step)] for i in range(QUICK_SWEEP_POINTS)]
    lengths = sweep.prompt_tokens
    if lengths and max(lengths) > QUICK_LONGEST_PROMPT:
        scaled = (max(1, n * QUICK_LONGEST_PROMPT // max(lengths)) for n in lengths)
        lengths = sorted(set(scaled))
    return sweep.model_copy(update={"n_cpu_moe": ks, "repeats": 1, "prompt_tokens": lengths})
