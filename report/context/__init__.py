"""One context builder per page: SQL over the evidence store, typed results.

Each module's `build` returns a frozen dataclass that a template renders (report/pages.py
says which page uses which); numbers stay in base units (bytes, ms, s, tokens/s) until a
filter formats them.
"""
