// Experiment → JSON and → text.
#include <algorithm>
#include <sstream>

#include "lab/lab.hpp"

namespace sdpa::lab {
namespace {

Json chart_json(const Chart& chart) {
  Json series = Json::array();
  for (const Series& s : chart.series)
    series.push_back({{"label", s.label}, {"x", s.x}, {"y", s.y}, {"dashed", s.dashed}});
  Json j = {{"title", chart.title},     {"x_label", chart.x_label},
            {"y_label", chart.y_label}, {"kind", chart.bar ? "bar" : "line"},
            {"log_x", chart.log_x},     {"log_y", chart.log_y}};
  if (chart.bar) j["categories"] = chart.categories;
  j["series"] = std::move(series);
  return j;
}

void print_table(std::ostringstream& out, const Table& table) {
  std::vector<std::size_t> width(table.columns.size());
  // Widths in code points, so "τ/√d" lines up like "d_k".
  auto length = [](const std::string& s) {
    return static_cast<std::size_t>(
        std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xc0) != 0x80; }));
  };
  for (std::size_t c = 0; c < width.size(); ++c) {
    width[c] = length(table.columns[c]);
    for (const auto& row : table.rows) width[c] = std::max(width[c], length(row[c]));
  }
  auto line = [&](const std::vector<std::string>& cells) {
    for (std::size_t c = 0; c < cells.size(); ++c) {
      out << (c == 0 ? "  " : "  ") << std::string(width[c] - length(cells[c]), ' ') << cells[c];
    }
    out << '\n';
  };
  out << table.title << '\n';
  line(table.columns);
  for (const auto& row : table.rows) line(row);
  out << '\n';
}

}  // namespace

Json to_json(const Experiment& e) {
  Json claims = Json::array();
  for (const Claim& c : e.claims)
    claims.push_back(
        {{"statement", c.statement}, {"supported", c.supported}, {"evidence", c.evidence}});
  Json tables = Json::array();
  for (const Table& t : e.tables)
    tables.push_back({{"title", t.title}, {"columns", t.columns}, {"rows", t.rows}});
  Json charts = Json::array();
  for (const Chart& c : e.charts) charts.push_back(chart_json(c));
  return {
      {"name", e.name},      {"title", e.title}, {"setup", e.setup}, {"parameters", e.parameters},
      {"data", e.data},      {"claims", claims}, {"tables", tables}, {"charts", charts},
      {"seconds", e.seconds}};
}

std::string to_text(const Experiment& e) {
  std::ostringstream out;
  out << e.title << "\n"
      << std::string(e.title.size() > 60 ? 60 : e.title.size(), '=') << "\n"
      << e.setup << "\n\n";
  for (const Table& t : e.tables) print_table(out, t);
  for (const Claim& c : e.claims)
    out << (c.supported ? "[supported]     " : "[NOT supported] ") << c.statement << "\n"
        << "                " << c.evidence << "\n";
  return out.str();
}

}  // namespace sdpa::lab
