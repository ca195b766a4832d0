"""The typed request `collect` builds: every flag is a field of `CollectRequest`, and
the fields that define a campaign (what `--resume` refuses to change) are declared on
it, each once."""

from __future__ import annotations

from pathlib import Path

from collector.collect_request import CollectRequest
from moe_evidence.cli import collect_request, parse

# What main() adds to every command's parsed line; not flags.
_NOT_FLAGS = {"command", "handler", "options", "argv"}


def test_every_collect_flag_is_a_field_of_the_request() -> None:
    """A flag without a field would be dropped silently; a field without a flag would
    fail every `collect`."""
    flags = set(vars(parse(["collect"]))) - _NOT_FLAGS
    assert flags == set(CollectRequest.flag_fields())


def test_every_flag_but_the_store_and_resume_defines_the_campaign() -> None:
    defining = set(CollectRequest.definition_fields())
    assert defining == set(CollectRequest.flag_fields()) - {"db", "resume"}


def test_the_request_is_the_command_line_typed() -> None:
    argv = ["collect", "--quick", "--repeats", "2", "--db", "x.duckdb", "--resume"]
    request = collect_request(parse(argv))
    assert request.command == ("moe-evidence", *argv)
    assert (request.quick, request.repeats, request.db, request.resume) == (
        True,
        2,
        Path("x.duckdb"),
        True,
    )
    assert request.defines_campaign()


def test_resume_alone_defines_nothing() -> None:
    """`--resume ID` alone (and `--db`) reruns the stored definition."""
    request = collect_request(parse(["collect", "--resume", "abc", "--db", "x.duckdb"]))
    assert request.resume == "abc" and not request.defines_campaign()


def test_a_zero_given_with_resume_is_a_definition_not_nothing() -> None:
    """`--resume ID --pause 0` (or `--repeats 0`) is a value the user gave: `0 == False`
    in Python, so it read as no flag and was dropped silently (the stored definition
    ran); now it is compared with the stored one like any other value."""
    for flags in (["--pause", "0"], ["--repeats", "0"]):
        request = collect_request(parse(["collect", "--resume", "abc", *flags]))
        assert request.defines_campaign(), flags
