#pragma once
// Shared declarations of the fastmde C++ extension.
#include <torch/extension.h>

namespace fastmde {
// Each hot path file defines a register function; register_all (registry.cpp) calls those built.
void register_all(pybind11::module_& m);
void register_depth_loss(pybind11::module_& m);
void register_depth_metrics(pybind11::module_& m);
void register_up_projection(pybind11::module_& m);
void register_scale_invariant_loss(pybind11::module_& m);
}  // namespace fastmde
