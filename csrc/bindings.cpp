// pybind11 binding of the CUDA launchers: raw device pointers and a stream handle in,
// Python exceptions out. No CUDA or torch headers: see csrc/README.md for why.
#include <pybind11/pybind11.h>

#include <string>

#include "launchers.h"

namespace py = pybind11;

#ifndef OBK_CUDA_ARCHS
#define OBK_CUDA_ARCHS "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "obert_kernels CUDA kernels (raw-pointer binding; use obert_kernels.ops, not this module)";
  m.attr("compiled_archs") = OBK_CUDA_ARCHS;
  m.def("woodbury_update", &obk::woodbury_update_launch, py::arg("finv"), py::arg("num_blocks"), py::arg("B"),
        py::arg("packed"), py::arg("grads"), py::arg("stride_block"), py::arg("stride_grad"), py::arg("d_valid"),
        py::arg("k"), py::arg("num_grads"), py::arg("rows"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>());
  m.def("obs_scores", &obk::obs_scores_launch, py::arg("weight"), py::arg("pruned"), py::arg("finv"),
        py::arg("num_blocks"), py::arg("B"), py::arg("packed"), py::arg("d"), py::arg("group"), py::arg("n_prune"),
        py::arg("subset_bits"), py::arg("num_subsets"), py::arg("out"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>());
  m.def("obs_update", &obk::obs_update_launch, py::arg("weight"), py::arg("prune_mask"), py::arg("finv"),
        py::arg("num_blocks"), py::arg("B"), py::arg("packed"), py::arg("d"), py::arg("group"), py::arg("mode"),
        py::arg("failed"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def("sequential_order", &obk::sequential_order_launch, py::arg("weight"), py::arg("pruned"), py::arg("finv"),
        py::arg("num_blocks"), py::arg("B"), py::arg("packed"), py::arg("d"), py::arg("unit"), py::arg("nm_m"),
        py::arg("nm_n"), py::arg("order"), py::arg("cumloss"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def("sequential_smem", &obk::sequential_smem);
  m.def(
      "device_count",
      []() {
        std::string error;
        const int n = obk::device_count(&error);
        return py::make_tuple(n, error);
      },
      "(number of CUDA devices, the runtime's message when there are none)");
  m.def("runtime_version", &obk::runtime_version);
  m.def("driver_version", &obk::driver_version);
  m.def("woodbury_max_block_size", &obk::woodbury_max_block_size);
  m.def("max_group_size", &obk::max_group_size);
  m.def("joint_max_block_size", &obk::joint_max_block_size);
}
