// Calls the register function of every hot path compiled into the extension.
#include "fastmde.h"

namespace fastmde {
void register_all(pybind11::module_& m) { (void)m; }
}  // namespace fastmde
