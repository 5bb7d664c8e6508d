#include "patching/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace phi3 {

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    switch (ch) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += ch;
    }
  }
  return o;
}

namespace {
std::string fmt(double v, int prec = 3) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", prec, v);
  return buf;
}

// Diverging scale: -1 -> red (178,24,43), 0 -> white, +1 -> blue (33,102,172).
std::string rdbu(double t) {
  t = std::max(-1.0, std::min(1.0, t));
  double r, g, b;
  if (t < 0) {
    double a = -t;
    r = 255 + a * (178 - 255);
    g = 255 + a * (24 - 255);
    b = 255 + a * (43 - 255);
  } else {
    r = 255 + t * (33 - 255);
    g = 255 + t * (102 - 255);
    b = 255 + t * (172 - 255);
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "rgb(%d,%d,%d)", int(r + 0.5), int(g + 0.5), int(b + 0.5));
  return buf;
}

// Words of `text` in lines of at most `width` characters (a longer word keeps its own line).
std::vector<std::string> wrap(const std::string& text, size_t width) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string word, line;
  while (in >> word) {
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      lines.push_back(line);
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}
}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int max_ticks) {
  std::vector<double> out;
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi) || max_ticks < 1) return out;
  const double range = hi - lo;
  // step = m * 10^e; a tick k * step is computed as (k * m) / 10^-e (or * 10^e), so it is the
  // double nearest the round value (0.6, not 0.6000000000000001).
  int e = static_cast<int>(std::floor(std::log10(range / max_ticks)));
  double m = 10;
  for (double c : {1.0, 2.0, 5.0, 10.0})
    if (range / (c * std::pow(10.0, e)) <= max_ticks) {
      m = c;
      break;
    }
  if (m == 10) m = 1, ++e;
  const double p10 = std::pow(10.0, std::abs(e));
  auto value = [&](long long k) { return e < 0 ? (static_cast<double>(k) * m) / p10 : static_cast<double>(k) * m * p10; };
  const double step = e < 0 ? m / p10 : m * p10;
  const long long k0 = static_cast<long long>(std::ceil(lo / step - 1e-9)),
                  k1 = static_cast<long long>(std::floor(hi / step + 1e-9));
  for (long long k = k0; k <= k1; ++k) out.push_back(value(k));
  return out;
}

std::string tick_text(double v) {
  if (std::fabs(v) < 1e-300) return "0";
  return fmt(v, 6);
}

std::string svg_heatmap(const std::string& title, const std::vector<std::string>& rows,
                        const std::vector<std::string>& cols, const std::vector<double>& values,
                        const std::string& x_label, const std::string& y_label, const HeatmapScale& scale) {
  const int nr = static_cast<int>(rows.size()), nc = static_cast<int>(cols.size());
  const double cell_w = std::max(14.0, std::min(40.0, 900.0 / std::max(1, nc)));
  const double cell_h = std::max(22.0, std::min(36.0, 520.0 / std::max(1, nr)));
  std::vector<std::string> label;
  for (const auto& l : scale.label)
    for (const auto& w : wrap(l, 30)) label.push_back(w);
  size_t longest_row = 0;
  for (const auto& r : rows) longest_row = std::max(longest_row, r.size());
  size_t longest_col = 0;
  for (const auto& c : cols) longest_col = std::max(longest_col, c.size());
  // Column labels run down at 60 degrees: ~5.7 px of height per character.
  const double left = std::max(80.0, 24.0 + 6.5 * longest_row), top = 50;
  const double bottom = std::max(60.0, std::min(130.0, 45.0 + 5.7 * longest_col));
  const double right = label.empty() ? 110 : 300;
  // Wide enough for the title (16 px font: ~8.5 px per character).
  const double W = std::max(left + nc * cell_w + right, 40.0 + 8.5 * title.size()), H = top + nr * cell_h + bottom;
  double vmax = scale.limit;
  if (!(vmax > 0)) {
    vmax = 0;
    for (double v : values)
      if (std::isfinite(v)) vmax = std::max(vmax, std::fabs(v));
    if (vmax == 0) vmax = 1;
  }
  auto colour = [&](double v) { return scale.sequential ? rdbu(std::max(0.0, v) / vmax) : rdbu(v / vmax); };
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << fmt(W, 6) << "\" height=\"" << fmt(H, 6)
    << "\" viewBox=\"0 0 " << fmt(W, 6) << " " << fmt(H, 6) << "\" data-colour-limit=\"" << fmt(vmax, 9)
    << "\" font-family=\"Helvetica,Arial,sans-serif\" font-size=\"11\">\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  const double title_x = std::max(left + nc * cell_w / 2, 20.0 + 4.25 * title.size());  // never cut on the left
  s << "<text x=\"" << fmt(title_x, 6) << "\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">" << xml_escape(title)
    << "</text>\n";
  for (int r = 0; r < nr; ++r) {
    for (int c = 0; c < nc; ++c) {
      double v = values[size_t(r) * nc + c];
      double x = left + c * cell_w, y = top + r * cell_h;
      s << "<rect x=\"" << fmt(x, 6) << "\" y=\"" << fmt(y, 6) << "\" width=\"" << fmt(cell_w, 6) << "\" height=\""
        << fmt(cell_h, 6) << "\" fill=\"" << (std::isfinite(v) ? colour(v) : "rgb(200,200,200)")
        << "\"><title>" << xml_escape(rows[r]) << ", " << xml_escape(cols[c]) << ": "
        << (std::isfinite(v) ? fmt(v, 5) : std::string("not computed")) << "</title></rect>\n";
    }
    s << "<text x=\"" << fmt(left - 6, 6) << "\" y=\"" << fmt(top + (r + 0.5) * cell_h + 4, 6)
      << "\" text-anchor=\"end\">" << xml_escape(rows[r]) << "</text>\n";
  }
  for (int c = 0; c < nc; ++c) {
    double x = left + (c + 0.5) * cell_w, y = top + nr * cell_h + 8;
    s << "<text transform=\"translate(" << fmt(x + 3, 6) << "," << fmt(y, 6)
      << ") rotate(60)\" text-anchor=\"start\">" << xml_escape(cols[c]) << "</text>\n";
  }
  s << "<text x=\"" << fmt(left + nc * cell_w / 2, 6) << "\" y=\"" << fmt(H - 8, 6) << "\" text-anchor=\"middle\">"
    << xml_escape(x_label) << "</text>\n";
  s << "<text transform=\"translate(16," << fmt(top + nr * cell_h / 2, 6) << ") rotate(-90)\" text-anchor=\"middle\">"
    << xml_escape(y_label) << "</text>\n";
  // Colour bar, ticked at round values.
  const double bx = left + nc * cell_w + 30, bh = std::max(100.0, nr * cell_h), steps = 48;
  const double lo = scale.sequential ? 0.0 : -vmax;
  for (int i = 0; i < steps; ++i) {
    const double v = vmax - (vmax - lo) * (i + 0.5) / steps;
    s << "<rect x=\"" << fmt(bx, 6) << "\" y=\"" << fmt(top + i * bh / steps, 6) << "\" width=\"16\" height=\""
      << fmt(bh / steps + 0.5, 6) << "\" fill=\"" << colour(v) << "\"/>\n";
  }
  s << "<rect x=\"" << fmt(bx, 6) << "\" y=\"" << fmt(top, 6) << "\" width=\"16\" height=\"" << fmt(bh, 6)
    << "\" fill=\"none\" stroke=\"#999\" stroke-width=\"0.5\"/>\n";
  for (double t : nice_ticks(lo, vmax, std::max(2, std::min(8, static_cast<int>(bh / 24))))) {
    const double y = top + (vmax - t) / (vmax - lo) * bh;
    s << "<line x1=\"" << fmt(bx + 16, 6) << "\" y1=\"" << fmt(y, 6) << "\" x2=\"" << fmt(bx + 20, 6) << "\" y2=\""
      << fmt(y, 6) << "\" stroke=\"#333\"/>\n";
    s << "<text x=\"" << fmt(bx + 23, 6) << "\" y=\"" << fmt(y + 4, 6) << "\">" << tick_text(t) << "</text>\n";
  }
  for (size_t i = 0; i < label.size(); ++i)
    s << "<text x=\"" << fmt(bx + 70, 6) << "\" y=\"" << fmt(top + 10 + 15 * i, 6) << "\">" << xml_escape(label[i])
      << "</text>\n";
  s << "</svg>\n";
  return s.str();
}

std::string svg_scatter(const std::string& title, const std::vector<double>& x, const std::vector<double>& y,
                        const std::vector<std::string>& labels, const std::string& x_label,
                        const std::string& y_label) {
  const double W = 560, H = 480, left = 70, right = 20, top = 50, bottom = 60;
  double lo = 0, hi = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isfinite(x[i])) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
    if (std::isfinite(y[i])) lo = std::min(lo, y[i]), hi = std::max(hi, y[i]);
  }
  if (hi - lo < 1e-12) hi = lo + 1;
  const double pad = 0.05 * (hi - lo);
  lo -= pad;
  hi += pad;
  auto px = [&](double v) { return left + (v - lo) / (hi - lo) * (W - left - right); };
  auto py = [&](double v) { return H - bottom - (v - lo) / (hi - lo) * (H - top - bottom); };
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << " " << H << "\" font-family=\"Helvetica,Arial,sans-serif\" font-size=\"11\">\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << W / 2 << "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">" << xml_escape(title)
    << "</text>\n";
  s << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << W - left - right << "\" height=\""
    << H - top - bottom << "\" fill=\"none\" stroke=\"#888\"/>\n";
  // axes through 0 and the y = x diagonal
  s << "<line x1=\"" << px(lo) << "\" y1=\"" << py(0) << "\" x2=\"" << px(hi) << "\" y2=\"" << py(0)
    << "\" stroke=\"#ccc\"/>\n";
  s << "<line x1=\"" << px(0) << "\" y1=\"" << py(lo) << "\" x2=\"" << px(0) << "\" y2=\"" << py(hi)
    << "\" stroke=\"#ccc\"/>\n";
  s << "<line x1=\"" << px(lo) << "\" y1=\"" << py(lo) << "\" x2=\"" << px(hi) << "\" y2=\"" << py(hi)
    << "\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n";
  for (double v : nice_ticks(lo, hi, 6)) {
    s << "<line x1=\"" << fmt(px(v), 6) << "\" y1=\"" << H - bottom << "\" x2=\"" << fmt(px(v), 6) << "\" y2=\""
      << H - bottom + 4 << "\" stroke=\"#888\"/>\n";
    s << "<line x1=\"" << left - 4 << "\" y1=\"" << fmt(py(v), 6) << "\" x2=\"" << left << "\" y2=\"" << fmt(py(v), 6)
      << "\" stroke=\"#888\"/>\n";
    s << "<text x=\"" << fmt(px(v), 6) << "\" y=\"" << H - bottom + 16 << "\" text-anchor=\"middle\">" << tick_text(v)
      << "</text>\n";
    s << "<text x=\"" << left - 6 << "\" y=\"" << fmt(py(v) + 4, 6) << "\" text-anchor=\"end\">" << tick_text(v)
      << "</text>\n";
  }
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) continue;
    s << "<circle cx=\"" << fmt(px(x[i]), 6) << "\" cy=\"" << fmt(py(y[i]), 6)
      << "\" r=\"3\" fill=\"rgb(33,102,172)\" fill-opacity=\"0.6\"><title>"
      << xml_escape(i < labels.size() ? labels[i] : "") << ": " << fmt(x[i], 4) << ", " << fmt(y[i], 4)
      << "</title></circle>\n";
  }
  s << "<text x=\"" << (left + W - right) / 2 << "\" y=\"" << H - 18 << "\" text-anchor=\"middle\">"
    << xml_escape(x_label) << "</text>\n";
  s << "<text transform=\"translate(18," << (top + H - bottom) / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
    << xml_escape(y_label) << "</text>\n";
  s << "</svg>\n";
  return s.str();
}

}  // namespace phi3
