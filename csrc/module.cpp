// fastmde._C: the C++ CPU kernels. Each hot path lives in its own file (depth_loss.cpp,
// depth_metrics.cpp, up_projection.cpp) and adds its functions through a register_* hook
// declared in fastmde.h; this file only assembles the module.
#include "fastmde.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastmde C++ CPU kernels";
  m.def("num_threads", &at::get_num_threads, "threads used by at::parallel_for");
  fastmde::register_all(m);
}
