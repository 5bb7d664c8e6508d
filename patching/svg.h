// Plain SVG figures: diverging heatmaps (red-blue, centred at 0, like the seed's plotly
// "RdBu" imshow) and scatter plots. No dependencies; every cell and point carries its value
// as an SVG <title> (shown on hover when the SVG is inline in the page or opened alone).
// Colour bars and axes are ticked at round values (1-2-5 steps).
#pragma once
#include <string>
#include <vector>

namespace phi3 {

struct HeatmapScale {
  // The colour limit: values in [-limit, limit] map onto the scale (beyond it: the end
  // colours); 0 = the largest |value| of this heatmap. Heatmaps given the same limit share
  // their colours.
  double limit = 0;
  // Values are >= 0 (attention probabilities): white -> blue over [0, limit] instead of red ->
  // white -> blue over [-limit, limit].
  bool sequential = false;
  // What the colour means (metric, normalisation, direction), written beside the colour bar,
  // one line each.
  std::vector<std::string> label;
};

std::string svg_heatmap(const std::string& title, const std::vector<std::string>& rows,
                        const std::vector<std::string>& cols, const std::vector<double>& values,
                        const std::string& x_label, const std::string& y_label, const HeatmapScale& scale = {});

std::string svg_scatter(const std::string& title, const std::vector<double>& x, const std::vector<double>& y,
                        const std::vector<std::string>& point_labels, const std::string& x_label,
                        const std::string& y_label);

// Round tick values (multiples of 1, 2 or 5 times a power of ten) inside [lo, hi], at most
// about max_ticks of them; 0 is one of them when it lies inside.
std::vector<double> nice_ticks(double lo, double hi, int max_ticks);
// A tick value as text: no float noise ("0.3", not "0.30000000000000004"; "-0", never).
std::string tick_text(double v);

std::string xml_escape(const std::string& s);

}  // namespace phi3
