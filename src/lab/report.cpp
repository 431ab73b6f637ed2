// The lab report: one self-contained HTML page — Chart.js inlined (read from the system's
// libjs-chart.js at run time), the chart data as an inline JSON block, no network access — with,
// per experiment, its claims and verdicts, its charts and its tables.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include "io/npy.hpp"
#include "lab/format.hpp"
#include "lab/lab.hpp"

namespace sdpa::lab {
namespace {

std::string escape_html(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

/// JSON that is safe inside <script>: '<', '>' and '&' (which JSON allows only inside strings)
/// become \u escapes, so no "</script>" or "<!--" can appear.
std::string script_safe_json(const Json& json) {
  std::string out;
  for (char c : json.dump()) {
    if (c == '<')
      out += "\\u003c";
    else if (c == '>')
      out += "\\u003e";
    else if (c == '&')
      out += "\\u0026";
    else
      out += c;
  }
  return out;
}

constexpr const char* kStyle = R"css(
:root { --ok: #1a7f37; --bad: #b42318; --ink: #1f2328; --muted: #59636e; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
       max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 0 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.muted, .setup { color: var(--muted); }
section { margin: 32px 0; }
.summary { font-size: 17px; }
.claims { list-style: none; padding: 0; }
.claim { border-left: 4px solid var(--line); padding: 6px 12px; margin: 8px 0; background: #f6f8fa; }
.claim.supported { border-color: var(--ok); }
.claim.refuted { border-color: var(--bad); }
.badge { display: inline-block; font-size: 12px; font-weight: 600; padding: 1px 8px; border-radius: 10px;
         color: #fff; margin-right: 6px; }
.supported .badge { background: var(--ok); }
.refuted .badge { background: var(--bad); }
.evidence { color: var(--muted); font-size: 13px; margin-top: 2px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 16px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13px; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding-bottom: 4px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
nav ul { padding-left: 20px; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); }
)css";

// Builds each chart from the inline JSON: line charts over numeric (optionally logarithmic) axes,
// bar charts over categories. Animation off, so the canvases are drawn when the page has loaded.
constexpr const char* kRenderScript = R"js(
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('lab-data').textContent);
  var palette = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#17becf', '#7f7f7f'];
  Chart.defaults.animation = false;
  Chart.defaults.font.size = 12;
  function axis(title, log) {
    return { type: log ? 'logarithmic' : 'linear', title: { display: !!title, text: title } };
  }
  data.experiments.forEach(function (experiment) {
    experiment.charts.forEach(function (chart, index) {
      var canvas = document.getElementById('chart-' + experiment.name + '-' + index);
      var bar = chart.kind === 'bar';
      var datasets = chart.series.map(function (series, k) {
        var color = palette[k % palette.length];
        if (bar) return { label: series.label, data: series.y, backgroundColor: color };
        return {
          label: series.label,
          data: series.x.map(function (x, j) { return { x: x, y: series.y[j] }; }),
          borderColor: color, backgroundColor: color, borderWidth: 2, pointRadius: 2,
          borderDash: series.dashed ? [6, 4] : []
        };
      });
      var x = bar ? { type: 'category', title: { display: !!chart.x_label, text: chart.x_label } }
                  : axis(chart.x_label, chart.log_x);
      new Chart(canvas, {
        type: bar ? 'bar' : 'line',
        data: bar ? { labels: chart.categories, datasets: datasets } : { datasets: datasets },
        options: {
          animation: false, responsive: true, aspectRatio: 1.6,
          plugins: { title: { display: true, text: chart.title }, legend: { position: 'bottom' } },
          scales: { x: x, y: axis(chart.y_label, chart.log_y) }
        }
      });
    });
  });
})();
)js";

void write_table(std::ostringstream& html, const Table& table) {
  html << "<table><caption>" << escape_html(table.title) << "</caption><thead><tr>";
  for (const std::string& c : table.columns) html << "<th>" << escape_html(c) << "</th>";
  html << "</tr></thead><tbody>";
  for (const auto& row : table.rows) {
    html << "<tr>";
    for (const std::string& cell : row) html << "<td>" << escape_html(cell) << "</td>";
    html << "</tr>";
  }
  html << "</tbody></table>\n";
}

void write_claims(std::ostringstream& html, const std::vector<Claim>& claims) {
  html << "<ul class=\"claims\">\n";
  for (const Claim& c : claims)
    html << "<li class=\"claim " << (c.supported ? "supported" : "refuted")
         << "\"><span class=\"badge\">" << (c.supported ? "supported" : "not supported")
         << "</span>" << escape_html(c.statement) << "<div class=\"evidence\">"
         << escape_html(c.evidence) << "</div></li>\n";
  html << "</ul>\n";
}

void write_section(std::ostringstream& html, const Experiment& e) {
  html << "<section id=\"" << escape_html(e.name) << "\">\n<h2>" << escape_html(e.title)
       << " <span class=\"muted\">(sdpa lab " << escape_html(e.name) << ", " << fixed(e.seconds, 1)
       << " s)</span></h2>\n<p class=\"setup\">" << escape_html(e.setup) << "</p>\n";
  write_claims(html, e.claims);
  html << "<div class=\"charts\">\n";
  for (std::size_t i = 0; i < e.charts.size(); ++i)
    html << "<figure><canvas id=\"chart-" << escape_html(e.name) << "-" << i
         << "\" role=\"img\" aria-label=\"" << escape_html(e.charts[i].title)
         << "\"></canvas></figure>\n";
  html << "</div>\n";
  for (const Table& t : e.tables) write_table(html, t);
  html << "</section>\n";
}

}  // namespace

std::string read_chart_js(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file)
    throw npy::IoError(path + ": cannot read Chart.js (" + std::strerror(errno) +
                       "); install the Debian package libjs-chart.js or pass --chartjs PATH");
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (text.find("Chart") == std::string::npos)
    throw npy::IoError(path + ": does not look like Chart.js (no 'Chart' in " +
                       std::to_string(text.size()) + " bytes)");
  for (std::size_t at = text.find("</"); at != std::string::npos; at = text.find("</", at + 2))
    if (text.compare(at, 8, "</script") == 0 || text.compare(at, 8, "</SCRIPT") == 0)
      throw npy::IoError(path + ": contains '</script', cannot be inlined in a page");
  return text;
}

std::string render_report(const std::vector<Experiment>& experiments, const std::string& chart_js,
                          const Json& run_info) {
  std::size_t supported = 0, claims = 0;
  Json chart_data = {{"experiments", Json::array()}};
  for (const Experiment& e : experiments) {
    for (const Claim& c : e.claims) supported += c.supported ? 1 : 0, ++claims;
    chart_data["experiments"].push_back({{"name", e.name}, {"charts", to_json(e)["charts"]}});
  }

  std::ostringstream html;
  html << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
       << "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
       << "<title>sdpa lab report</title>\n<style>" << kStyle << "</style>\n</head>\n<body>\n"
       << "<header>\n<h1>The theory of scaled dot-product attention, measured</h1>\n"
       << "<p class=\"muted\">sdpa lab report · sdpa " << escape_html(run_info.value("version", ""))
       << " · seed " << escape_html(run_info.value("seed", Json()).dump()) << " · "
       << escape_html(run_info.value("mode", "")) << " · "
       << fixed(run_info.value("seconds", 0.0), 1) << " s in all</p>\n<p class=\"summary\"><strong>"
       << supported << " of " << claims
       << "</strong> claims supported by this run's measurements.</p>\n<nav><ul>\n";
  for (const Experiment& e : experiments) {
    std::size_t ok = 0;
    for (const Claim& c : e.claims) ok += c.supported ? 1 : 0;
    html << "<li><a href=\"#" << escape_html(e.name) << "\">" << escape_html(e.title) << "</a> — "
         << ok << "/" << e.claims.size() << " supported</li>\n";
  }
  html << "</ul></nav>\n<p class=\"muted\">Each verdict is computed from the numbers on this page "
          "by "
          "the rule stated after it; the same --seed gives the same numbers (timings aside).</p>\n"
          "</header>\n";
  for (const Experiment& e : experiments) write_section(html, e);
  html << "<footer>Generated by <code>sdpa lab report</code>. Charts: Chart.js, inlined (MIT "
          "license); the page needs no network.</footer>\n"
       << "<script>" << chart_js << "\n</script>\n"
       << "<script type=\"application/json\" id=\"lab-data\">" << script_safe_json(chart_data)
       << "</script>\n<script>" << kRenderScript << "</script>\n</body>\n</html>\n";
  return html.str();
}

}  // namespace sdpa::lab
