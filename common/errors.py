"""The project's errors. Every one carries a message that says what to do next.

EvidenceError                  base: the CLI prints `error: <message>` and exits 1
├── ConfigError                a config file or flag is wrong (names the key)
├── StoreError                 the evidence store cannot be used
│   ├── StoreLocked            another process holds the DuckDB file (names the PID)
│   ├── SchemaTooNew           the store was written by a newer version of this tool
│   ├── StoreCorrupt           bytes of the file are not what DuckDB wrote (restore it)
│   └── DiskFull               the disk under the store filled up (what was committed is kept)
├── EngineError                the inference engine cannot be built or found
├── ModelError                 a model file is missing or unreadable
├── ServerError                the server under test did not start or stay up
│   ├── PortInUse
│   ├── ServerExited           died during load (exit code and log tail attached)
│   ├── ServerNotHealthy       never answered /health in time
│   ├── DoesNotFit             the device ran out of memory loading it: evidence, not a failure
│   └── CampaignFailed         configurations failed; the rest of the campaign is stored
├── StreamError                a response stream broke the protocol (malformed SSE, bad JSON)
├── LogParseError              a file has none of the llama.cpp loader lines we parse
├── GGUFError                  a file is not a readable GGUF model
├── SandboxError               the code sandbox itself could not run (not: the code failed)
└── BuildError                 the whitepaper cannot be built from this store
"""

from __future__ import annotations


class EvidenceError(Exception):
    """Base class: anything the tool reports to the user as a one-line error."""


class ConfigError(EvidenceError):
    pass


class StoreError(EvidenceError):
    pass


class StoreLocked(StoreError):
    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"PID {pid}" if pid is not None else "another process"
        super().__init__(
            f"evidence store {path} is locked by {holder}; wait for it to finish "
            f"or use --db to write elsewhere"
        )
        self.path = path
        self.pid = pid


class SchemaTooNew(StoreError):
    pass


class StoreCorrupt(StoreError):
    """Blocks of the store's file fail DuckDB's checksum: something other than DuckDB
    wrote them (a disk fault, a bad copy). Nothing here can repair a block; what can
    is a copy of the evidence made before: a backup, or a Parquet bundle."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"evidence store {path} is damaged ({detail}); restore it from a backup, or "
            f"from a Parquet bundle of it (`moe-evidence export` writes one): "
            f"`moe-evidence import BUNDLE --db NEW.duckdb`, then use --db NEW.duckdb"
        )
        self.path = path


class DiskFull(StoreError):
    """A write to the store failed for want of space. Each request is one transaction,
    so what was committed before is whole; `then` says how to go on once space is free."""

    def __init__(self, path: str, then: str = "run the command again") -> None:
        super().__init__(
            f"disk full: the evidence store {path} could not be written; everything "
            f"stored before is kept; free space on that disk, then {then}"
        )
        self.path = path


class EngineError(EvidenceError):
    pass


class ModelError(EvidenceError):
    pass


class ServerError(EvidenceError):
    pass


class PortInUse(ServerError):
    pass


class ServerExited(ServerError):
    pass


class ServerNotHealthy(ServerError):
    pass


class DoesNotFit(ServerError):
    """The configuration's load failed because the device could not hold it (the
    device's own out-of-memory words in the log). The campaign records it and goes
    on: on a card too small for the baseline this is the finding, not a fault."""


class CampaignFailed(ServerError):
    """Some server configurations failed; what ran is stored in `campaign_id`."""

    def __init__(self, message: str, campaign_id: str) -> None:
        super().__init__(message)
        self.campaign_id = campaign_id


class StreamError(EvidenceError):
    pass


class LogParseError(EvidenceError):
    pass


class GGUFError(EvidenceError):
    pass


class SandboxError(EvidenceError):
    pass


class BuildError(EvidenceError):
    pass
