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
}  // namespace

std::string svg_heatmap(const std::string& title, const std::vector<std::string>& rows,
                        const std::vector<std::string>& cols, const std::vector<double>& values,
                        const std::string& x_label, const std::string& y_label) {
  const int nr = static_cast<int>(rows.size()), nc = static_cast<int>(cols.size());
  const double cell_w = std::max(14.0, std::min(40.0, 900.0 / std::max(1, nc)));
  const double cell_h = std::max(22.0, std::min(36.0, 520.0 / std::max(1, nr)));
  const double left = 80, top = 50, bottom = 130, right = 110;
  const double W = left + nc * cell_w + right, H = top + nr * cell_h + bottom;
  double vmax = 0;
  for (double v : values)
    if (std::isfinite(v)) vmax = std::max(vmax, std::fabs(v));
  if (vmax == 0) vmax = 1;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << fmt(W, 6) << "\" height=\"" << fmt(H, 6)
    << "\" font-family=\"Helvetica,Arial,sans-serif\" font-size=\"11\">\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << fmt(W / 2, 6) << "\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">" << xml_escape(title)
    << "</text>\n";
  for (int r = 0; r < nr; ++r) {
    for (int c = 0; c < nc; ++c) {
      double v = values[size_t(r) * nc + c];
      double x = left + c * cell_w, y = top + r * cell_h;
      s << "<rect x=\"" << fmt(x, 6) << "\" y=\"" << fmt(y, 6) << "\" width=\"" << fmt(cell_w, 6) << "\" height=\""
        << fmt(cell_h, 6) << "\" fill=\"" << (std::isfinite(v) ? rdbu(v / vmax) : "rgb(200,200,200)")
        << "\"><title>" << xml_escape(rows[r]) << ", " << xml_escape(cols[c]) << ": " << fmt(v, 5)
        << "</title></rect>\n";
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
  // Colour bar.
  const double bx = left + nc * cell_w + 30, bh = std::max(80.0, nr * cell_h), steps = 40;
  for (int i = 0; i < steps; ++i) {
    double t = 1.0 - 2.0 * i / (steps - 1);
    s << "<rect x=\"" << fmt(bx, 6) << "\" y=\"" << fmt(top + i * bh / steps, 6) << "\" width=\"16\" height=\""
      << fmt(bh / steps + 0.5, 6) << "\" fill=\"" << rdbu(t) << "\"/>\n";
  }
  s << "<text x=\"" << fmt(bx + 20, 6) << "\" y=\"" << fmt(top + 8, 6) << "\">" << fmt(vmax) << "</text>\n";
  s << "<text x=\"" << fmt(bx + 20, 6) << "\" y=\"" << fmt(top + bh / 2 + 4, 6) << "\">0</text>\n";
  s << "<text x=\"" << fmt(bx + 20, 6) << "\" y=\"" << fmt(top + bh, 6) << "\">" << fmt(-vmax) << "</text>\n";
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
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"Helvetica,Arial,sans-serif\" font-size=\"11\">\n";
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
  for (int i = 0; i <= 4; ++i) {
    double v = lo + (hi - lo) * i / 4;
    s << "<text x=\"" << px(v) << "\" y=\"" << H - bottom + 16 << "\" text-anchor=\"middle\">" << fmt(v) << "</text>\n";
    s << "<text x=\"" << left - 6 << "\" y=\"" << py(v) + 4 << "\" text-anchor=\"end\">" << fmt(v) << "</text>\n";
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
