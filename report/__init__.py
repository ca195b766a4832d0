"""The report side: the whitepaper site, built from the evidence store alone.

    evidence store (DuckDB, read-only), or a fleet directory of Parquet
    bundles read in place (report.source)
      -> report.queries     the chosen campaigns and evidence.metrics' views
      -> report.context.*   one typed context per page (SQL aggregates)
      -> report.charts      Altair specs + static SVGs (vl-convert)
      -> templates/*.md.j2  rendered by report.render with report.formatting
      -> report.hygiene     placeholders, None/NaN, conflict markers refused
      -> report.site        mkdocs build --strict, offline check
      -> report.publish     mike deploy (versions on gh-pages)

Nothing here imports the capture side (collector).
Command line: `moe-evidence build|publish` (moe_evidence.cli).
"""

from report.build import BuildOptions, BuildResult, build_site
from report.publish import publish

__all__ = ["BuildOptions", "BuildResult", "build_site", "publish"]
