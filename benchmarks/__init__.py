"""Instrument validation (`nox -s perf`): the collector measured against clocks we control.

Each module measures one thing and returns `results.Measurement`s; `python -m
benchmarks` runs them, prints one table with pass/fail against the targets and
stores it in the evidence store's `perf_results` table, from which the site's
'Instrument validation' page is built.

    accuracy      arrival stamps vs a calibrated server's send stamps; collector CPU
    sampler       the telemetry sampler's own CPU use
    interference  the real engine with and without the sampler; vs llama-bench
    ingest        store write rate, batched vs row by row
    site_build    site build time vs store size
"""
