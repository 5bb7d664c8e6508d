// Plain SVG figures: diverging heatmaps (red-blue, centred at 0, like the seed's plotly
// "RdBu" imshow) and scatter plots. No dependencies; values show as hover titles.
#pragma once
#include <string>
#include <vector>

namespace phi3 {

std::string svg_heatmap(const std::string& title, const std::vector<std::string>& rows,
                        const std::vector<std::string>& cols, const std::vector<double>& values,
                        const std::string& x_label, const std::string& y_label);

std::string svg_scatter(const std::string& title, const std::vector<double>& x, const std::vector<double>& y,
                        const std::vector<std::string>& point_labels, const std::string& x_label,
                        const std::string& y_label);

std::string xml_escape(const std::string& s);

}  // namespace phi3
