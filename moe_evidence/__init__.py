"""The application: one command line (`moe-evidence`) over the packages.

It is the only place that knows the whole path of the data: `collect` runs the
capture (collector) and then the scoring (scoring) on what was stored; `build`
renders the report (report) from the store alone.
"""
