#include "model/param_units.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace og {

// Unit of a GPT parameter by name: wte -> 0, h.<l>.* -> 1 + l, lm_head -> last.
std::vector<ParamUnit> gpt_param_units(const ParamLayout& layout) {
  const auto& ps = layout.params();
  auto unit_of = [&](const std::string& name, int n_blocks) -> int {
    if (name == "wte") return 0;
    if (name == "lm_head") return n_blocks + 1;
    OG_CHECK(name.rfind("h.", 0) == 0, "internal: parameter {} belongs to no GPT unit", name);
    return 1 + std::stoi(name.substr(2));
  };
  int n_blocks = 0;
  for (const auto& p : ps)
    if (p.name.rfind("h.", 0) == 0) n_blocks = std::max(n_blocks, 1 + std::stoi(p.name.substr(2)));
  std::vector<ParamUnit> units((size_t)n_blocks + 2);
  std::vector<bool> seen(units.size(), false);
  int current = -1;
  for (size_t i = 0; i < ps.size(); ++i) {
    const int u = unit_of(ps[i].name, n_blocks);
    if (u != current) {
      OG_CHECK(!seen[u] && u == current + 1, "internal: GPT unit {} is not one contiguous run of the layout", u);
      seen[u] = true;
      units[u].first = i;
      units[u].offset = ps[i].offset;
      current = u;
    }
    units[u].end = i + 1;
  }
  OG_CHECK(current == (int)units.size() - 1, "internal: the layout has no lm_head after its blocks");
  for (size_t u = 0; u < units.size(); ++u)
    units[u].floats = (u + 1 < units.size() ? units[u + 1].offset : layout.total()) - units[u].offset;
  return units;
}

}  // namespace og
