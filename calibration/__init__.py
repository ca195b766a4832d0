"""A calibrated stream server: a fake inference server whose timeline is known.

It speaks the three APIs the collector drives (OpenAI chat, OpenAI completions,
Shimmy's native API), sends tokens on a scripted schedule with scripted faults,
and stamps the moment each write leaves it, so tests and the `perf` benchmark
can compare the collector's arrival stamps with the server's send stamps.

Everything lives in `calibration.stream_server` (`Scenario`, `CalibratedServer`,
`StreamRecord`). Nothing is re-exported here: `python -m
calibration.stream_server` would otherwise import the module twice.
"""
