"""The request the benchmarks send: the protocol's creative-writing test, as a campaign
sends it (the protocol's prompt, the campaign's default temperature and seed)."""

from __future__ import annotations

from collector.apis import GenerationParams
from collector.config import CampaignSection
from collector.protocol import PROTOCOL


def creative_writing(
    model: str, max_tokens: int | None = None, cache_prompt: bool | None = None
) -> GenerationParams:
    """The streamed "creative-writing" request for `model`, with the test's own token
    budget unless `max_tokens` is given."""
    (test,) = PROTOCOL.select(["creative-writing"])
    defaults = CampaignSection()
    return GenerationParams(
        prompt=test.prompt,
        max_tokens=test.max_tokens if max_tokens is None else max_tokens,
        temperature=defaults.temperature,
        seed=defaults.seed,
        stream=True,
        model=model,
        cache_prompt=cache_prompt,
    )
