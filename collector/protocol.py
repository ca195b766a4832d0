"""The benchmark protocol (collector/data/protocol.toml), loaded once."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class ProtocolTest:
    test_id: str
    ordinal: int
    category: str
    prompt: str
    max_tokens: int
    success_criteria: str


@dataclass(frozen=True)
class Protocol:
    version: str
    temperature: float
    pause_between_tests_s: float
    tests: tuple[ProtocolTest, ...]

    def select(self, test_ids: list[str] | None) -> tuple[ProtocolTest, ...]:
        """The chosen tests in protocol order (all when `test_ids` is None)."""
        if test_ids is None:
            return self.tests
        wanted = set(test_ids)
        return tuple(t for t in self.tests if t.test_id in wanted)


def load_protocol() -> Protocol:
    raw = tomllib.loads(
        resources.files("collector").joinpath("data/protocol.toml").read_text(encoding="utf-8")
    )
    tests = tuple(
        ProtocolTest(
            test_id=t["test_id"],
            ordinal=i + 1,
            category=t["category"],
            prompt=t["prompt"],
            max_tokens=int(t["max_tokens"]),
            success_criteria=t["success_criteria"],
        )
        for i, t in enumerate(raw["tests"])
    )
    return Protocol(
        version=raw["protocol_version"],
        temperature=float(raw["temperature"]),
        pause_between_tests_s=float(raw["pause_between_tests_s"]),
        tests=tests,
    )


PROTOCOL = load_protocol()
TEST_IDS: tuple[str, ...] = tuple(t.test_id for t in PROTOCOL.tests)
