"""What every layer shares and that depends on nothing of this project.

`common.errors`: the error hierarchy every command reports through.
`common.thresholds`: the release gates' default thresholds, as data
(`gate_thresholds.toml`), read by the config validation and by the scorer.
"""
