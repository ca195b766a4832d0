"""Rendering templates/*.md.j2 into Markdown pages under docs/.

The Jinja environment is strict: an undefined name, a `None` or a bare float
reaching the page is an error naming the template and line. Plain strings
are escaped on the way out (`report.formatting.finalize`); only the filters'
`Markup` results pass unchanged.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from common.errors import BuildError
from evidence.statistics import MIN_N_FOR_INTERVAL
from report.charts import Chart, Charts, spec_json
from report.formatting import FILTERS, escape_text, figure, finalize
from report.values import Missing


def environment(templates: Path) -> jinja2.Environment:
    """The Jinja environment every page is rendered with."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        # Autoescape makes macro results Markup; `finalize` escapes plain strings for
        # Markdown as well as HTML before the HTML escaper sees them.
        autoescape=True,
        finalize=finalize,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    # Pages say in words where spreads and intervals start; one constant decides it.
    env.globals["min_n"] = MIN_N_FOR_INTERVAL
    return env


def chart_markup(charts: Charts, chart_id: str, prefix: str = "") -> Markup:
    """A chart's figure: the static SVG, caption, and the inline spec for Vega."""
    chart = charts.get(chart_id)
    if chart is None:
        raise BuildError(f"a template asks for chart {chart_id!r}, which the build does not make")
    if isinstance(chart, Missing):
        return (
            Markup('\n<p class="chart-missing">Chart not drawn: ')
            + figure(chart)
            + Markup(".</p>\n")
        )
    return _figure(chart, prefix)


def _figure(chart: Chart, prefix: str) -> Markup:
    alt_text = escape_text(chart.alt)
    return Markup(
        "\n"
        f'<figure class="chart" id="chart-{chart.chart_id}" markdown="span">\n'
        f"![{alt_text}]({prefix}assets/charts/{chart.chart_id}.svg){{ .chart-static }}\n"
        f"<figcaption>{escape_text(chart.title)} "
        f'(<a href="{prefix}assets/charts/{chart.chart_id}.vl.json" download>Vega-Lite spec</a>)'
        "</figcaption>\n"
        "</figure>\n"
        f'<script type="application/json" class="vega-spec" data-chart="{chart.chart_id}">'
        f"{spec_json(chart.spec)}</script>\n"
    )


def _template_location(exc: BaseException) -> str | None:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    if not frames:
        return None
    return f"templates/{Path(frames[-1].filename).name}:{frames[-1].lineno}"


def render_page(
    env: jinja2.Environment,
    template: str,
    out: Path,
    context: Mapping[str, Any],
) -> Path:
    """Render `template` with `context` into `out`; errors name the template line."""
    try:
        text = env.get_template(template).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise BuildError(f"templates/{template}:{exc.lineno}: {exc.message}") from exc
    except (jinja2.UndefinedError, BuildError, TypeError, ValueError, AttributeError) as exc:
        where = _template_location(exc) or f"templates/{template}"
        raise BuildError(f"{where}: {exc}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
