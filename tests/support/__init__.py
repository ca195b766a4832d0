"""What the tests share, one module per kind of helper:

* `cli`     -- `moe-evidence` in a fresh process, as a user runs it; the store read back.
* `engine`  -- campaigns in-process: the real engine's command, fault-injecting progress.
* `stores`  -- hand-made stores (StoreFactory), row by row.
* `report`  -- synthetic stores, a scratch project, a site build, a local web server.
* `gguf`    -- tiny hand-written GGUF files.

Fixtures live in tests/conftest.py; tests never import each other."""
