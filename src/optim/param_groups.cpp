#include "optim/param_groups.h"

#include <algorithm>

#include "core/error.h"

namespace og {

ParamGroups::ParamGroups(const std::vector<GroupSpec>& specs, const ParamLayout& layout, float* params,
                         const float* grads, Device device, const OptimizerFactory& factory)
    : ParamGroups(
          specs, layout,
          [&](const ParamInfo& p) {
            return ParamSlot{p.name, p.role, p.rows, p.cols, params + p.offset, grads + p.offset};
          },
          [&](const GroupSpec& s, std::vector<ParamSlot> slots) {
            return factory ? factory(s, std::move(slots), device) : make_optimizer(s.hp, std::move(slots), device);
          }) {}

ParamGroups::ParamGroups(const std::vector<GroupSpec>& specs, const ParamLayout& layout, const SlotMaker& make_slot,
                         const OptimizerMaker& make_opt) {
  std::vector<int> claimed(layout.params().size(), -1);
  for (size_t gi = 0; gi < specs.size(); ++gi) {
    const GroupSpec& s = specs[gi];
    std::vector<ParamSlot> slots;
    size_t elems = 0;
    for (size_t pi = 0; pi < layout.params().size(); ++pi) {
      const ParamInfo& p = layout.params()[pi];
      if (std::find(s.roles.begin(), s.roles.end(), p.role) == s.roles.end()) continue;
      OG_CHECK(claimed[pi] < 0, "parameter {} is claimed by optimizer groups {} and {}", p.name,
               specs[claimed[pi]].name, s.name);
      claimed[pi] = (int)gi;
      slots.push_back(make_slot(p));
      elems += p.numel();
    }
    if (slots.empty()) continue;
    Group g;
    g.spec = s;
    g.num_params = slots.size();
    g.num_elements = elems;
    g.opt = make_opt(s, std::move(slots));
    groups_.push_back(std::move(g));
  }
  for (size_t pi = 0; pi < claimed.size(); ++pi)
    OG_CHECK(claimed[pi] >= 0, "parameter {} (role {}) belongs to no optimizer group", layout.params()[pi].name,
             role_name(layout.params()[pi].role));
}

void ParamGroups::step(int64_t step, double base_lr) {
  for (auto& g : groups_) {
    StepContext ctx;
    ctx.step = step;
    ctx.lr = (float)(base_lr * g.spec.lr_scale);
    g.opt->step(ctx);
  }
}

std::vector<StateTensor> ParamGroups::state() {
  std::vector<StateTensor> all;
  for (auto& g : groups_)
    for (auto& t : g.opt->state()) {
      t.name = g.spec.name + ":" + t.name;
      all.push_back(std::move(t));
    }
  return all;
}

std::map<std::string, double> ParamGroups::stats() const {
  std::map<std::string, double> all;
  for (const auto& g : groups_)
    for (const auto& [k, v] : g.opt->stats()) all[g.spec.name + "." + k] = v;
  return all;
}

void ParamGroups::synchronize_state() {
  for (auto& g : groups_) g.opt->synchronize_state();
}

std::vector<Optimizer*> ParamGroups::optimizers() {
  std::vector<Optimizer*> all;
  for (auto& g : groups_) all.push_back(g.opt.get());
  return all;
}

std::string ParamGroups::describe() const {
  std::string s;
  for (const auto& g : groups_) {
    const auto& h = g.spec.hp;
    s += fmt::format("  group {:<9} {:>3} params {:>11} elements  {:<8} lr x{:.4g}  wd {:g}", g.spec.name, g.num_params,
                     g.num_elements, name_of(h.algorithm), g.spec.lr_scale, h.weight_decay);
    if (h.algorithm == Algorithm::Dion2 || h.algorithm == Algorithm::NorDion2)
      s += fmt::format("  fraction {:g} select {} ef {}", h.fraction, name_of(h.select), h.ef ? "on" : "off");
    if (h.algorithm == Algorithm::Dion) s += fmt::format("  rank_fraction {:g}", h.rank_fraction);
    if (is_matrix_algorithm(h.algorithm))
      s += fmt::format("  mu {:g} {}{}", h.mu, name_of(h.ortho), h.nesterov ? " nesterov" : "");
    s += "\n";
  }
  return s;
}

}  // namespace og
