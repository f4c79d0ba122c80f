// A log of a model's UnitSource calls (model/param_units.h) and a check of the protocol every
// source relies on, shared by the CPU and CUDA model tests:
//  - a unit is acquired only when not held, released only when held, and at most two are held;
//    nothing is held at the end;
//  - a `next` hint names the unit the model acquires next;
//  - forward only: every unit is acquired once, in order 0, 1, .., n-1, and no gradient calls;
//  - forward + backward: every unit gets one grad_buffer and then one grads_ready, in the order
//    n-1, .., 0; at most two gradient buffers are out at once; a unit other than the embedding
//    (0) is held while its gradient buffer is out (its backward reads its weights).
#pragma once
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace og_test {

struct UnitCallLog {
  struct Call {
    char op;  // 'a' acquire, 'r' release, 'g' grad_buffer, 'd' grads_ready
    int unit, next;
  };
  std::vector<Call> calls;
  void add(char op, int unit, int next = -1) { calls.push_back({op, unit, next}); }
  void clear() { calls.clear(); }

  // "" when the log follows the protocol, else the first violation.
  std::string check(int n_units, bool backward) const {
    std::set<int> held, out;
    std::vector<int> acquired, readied;
    int pending_hint = -1;
    for (size_t i = 0; i < calls.size(); ++i) {
      const Call& c = calls[i];
      const std::string at = fmt::format("call {} ({} {})", i, c.op, c.unit);
      if (c.unit < 0 || c.unit >= n_units) return at + ": unit out of range";
      switch (c.op) {
        case 'a':
          if (pending_hint >= 0 && c.unit != pending_hint)
            return at + fmt::format(": the previous hint named unit {}", pending_hint);
          if (held.count(c.unit)) return at + ": acquired while held";
          held.insert(c.unit);
          if (held.size() > 2) return at + ": a third unit held";
          acquired.push_back(c.unit);
          pending_hint = c.next;
          break;
        case 'r':
          if (!held.erase(c.unit)) return at + ": released while not held";
          break;
        case 'g':
          if (out.count(c.unit)) return at + ": a second gradient buffer";
          if (c.unit > 0 && !held.count(c.unit)) return at + ": gradient buffer of a unit not held";
          out.insert(c.unit);
          if (out.size() > 2) return at + ": a third gradient buffer out";
          break;
        case 'd':
          if (!out.erase(c.unit)) return at + ": grads_ready without grad_buffer";
          readied.push_back(c.unit);
          break;
        default: return at + ": unknown call";
      }
    }
    if (!held.empty()) return fmt::format("{} unit(s) still held at the end", held.size());
    if (!out.empty()) return fmt::format("{} gradient buffer(s) never handed back", out.size());
    if (!backward) {
      if ((int)acquired.size() != n_units) return fmt::format("{} acquires for {} units", acquired.size(), n_units);
      for (int u = 0; u < n_units; ++u)
        if (acquired[u] != u) return fmt::format("acquire {} was unit {}", u, acquired[u]);
      if (!readied.empty()) return "gradient calls in a forward-only pass";
      return "";
    }
    if ((int)readied.size() != n_units) return fmt::format("{} grads_ready for {} units", readied.size(), n_units);
    for (int i = 0; i < n_units; ++i)
      if (readied[i] != n_units - 1 - i) return fmt::format("grads_ready {} was unit {}", i, readied[i]);
    return "";
  }
};

}  // namespace og_test
