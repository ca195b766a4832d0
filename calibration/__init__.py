"""A calibrated stream server: a fake inference server whose timeline is known.

It speaks the three APIs the collector drives (OpenAI chat, OpenAI completions,
Shimmy's native API), sends tokens on a scripted schedule with scripted faults,
and stamps the moment each write leaves it, so tests and the `perf` benchmark
can compare the collector's arrival stamps with the server's send stamps.

Three parts: `calibration.scenario` (what a request gets back and what the
server recorded: `Scenario`, `StreamRecord`), `calibration.shapes` (each API's
events on the wire) and `calibration.server` (`CalibratedServer`, and `python -m
calibration.server`). Nothing is re-exported here: `python -m calibration.server`
would otherwise import the module twice.
"""
