// Calls the register function of every hot path compiled into the extension.
#include "fastmde.h"

namespace fastmde {
void register_all(pybind11::module_& m) {
  register_depth_loss(m);
  register_depth_metrics(m);
  register_up_projection(m);
  register_scale_invariant_loss(m);
}
}  // namespace fastmde
