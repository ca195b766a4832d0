// Replace each chart's static SVG with the interactive Vega view. The spec is
// inlined in the page (script.vega-spec), so no request is made; if Vega is
// missing or fails, the static SVG simply stays.
(function () {
  function render() {
    if (typeof window.vegaEmbed !== "function") return;
    document.querySelectorAll("script.vega-spec:not([data-done])").forEach(function (node) {
      node.setAttribute("data-done", "1");
      var figure = document.getElementById("chart-" + node.dataset.chart);
      if (!figure) return;
      var target = document.createElement("div");
      target.className = "vega-chart";
      var spec = JSON.parse(node.textContent);
      window.vegaEmbed(target, spec, { renderer: "svg", actions: false })
        .then(function () {
          var fallback = figure.querySelector("img.chart-static");
          if (fallback) fallback.replaceWith(target);
          figure.classList.add("chart-live");
        })
        .catch(function (error) {
          console.warn("chart " + node.dataset.chart + " stays static:", error);
        });
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(render);
  } else {
    document.addEventListener("DOMContentLoaded", render);
  }
})();
