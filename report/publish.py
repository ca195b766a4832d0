"""Publishing a version of the whitepaper with mike (local `gh-pages` branch).

`moe-evidence publish 1.7.0` builds and checks the site exactly as
`build` does (strict, hygiene, offline), then `mike deploy --update-aliases
1.7.0 latest` commits it to gh-pages beside the earlier versions. The version
records the campaigns it shows: on every page ("Built from ..."), in the
commit message, and as the `campaigns` property of its entry in versions.json
(Material's version selector reads that file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from common.errors import BuildError
from report.build import BuildOptions, BuildResult, build_site
from report.site import GENERATED_CONFIG

# mike has no `python -m mike`; run its console entry point with this interpreter.
_MIKE = "import sys; from mike.driver import main; sys.argv[0] = 'mike'; sys.exit(main())"


def _mike(args: Sequence[str], root: Path) -> str:
    # mike runs `mkdocs` from PATH: make it this environment's.
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=os.pathsep.join([bindir, os.environ.get("PATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", _MIKE, *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise BuildError(f"mike {args[0]} failed: {last}")
    return done.stdout


def publish(
    version: str,
    *,
    db: Path,
    campaigns: Sequence[str] = (),
    all_campaigns: bool = False,
    root: Path = Path("."),
    alias: str = "latest",
    push: bool = False,
) -> BuildResult:
    """Build the site for `version` and deploy it with mike; return the build's result."""
    root = root.resolve()
    if not (root / ".git").exists():
        raise BuildError(f"{root} is not a git repository; mike publishes to its gh-pages branch")
    result = build_site(
        BuildOptions(
            db=db,
            campaigns=tuple(campaigns),
            all_campaigns=all_campaigns,
            root=root,
            version=version,
        )
    )
    if not result.campaign_ids:
        raise BuildError(
            f"the evidence store {db} holds no campaign; a version must show evidence, "
            "so record one with `nox -s collect` first"
        )
    shown = ", ".join(result.campaign_ids)
    # The config the build just wrote: mkdocs.yml with this site's navigation.
    config = str(root / GENERATED_CONFIG)
    args = [
        "deploy",
        "--config-file",
        config,
        "--update-aliases",
        "--title",
        version,
        "--message",
        f"Deploy whitepaper {version} from {db.name}: campaign(s) {shown}",
        "--prop-set",
        f"campaigns={json.dumps(list(result.campaign_ids))}",
    ]
    if push:
        args.append("--push")
    _mike([*args, version, alias], root)
    _mike(["set-default", "--config-file", config, alias], root)
    return result
