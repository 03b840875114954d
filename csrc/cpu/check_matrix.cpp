// Argument checks shared by the CPU and CUDA entry points.
#include <string>

#include "qme/ops.h"

namespace qme {

void check_matrix(const MatrixView& m, const char* name) {
  const std::string n(name);
  if (m.rows < 0 || m.cols < 0)
    throw InvalidArgument(n + ": negative shape (" + std::to_string(m.rows) + ", " +
                          std::to_string(m.cols) + ")");
  if (m.stride_row < 0 || m.stride_col < 0)
    throw InvalidArgument(n + ": negative strides are not supported");
  if (m.rows > 0 && m.cols > 0 && m.data == nullptr)
    throw InvalidArgument(n + ": null data pointer for a non-empty matrix");
  if (static_cast<int>(m.dtype) < 0 || static_cast<int>(m.dtype) > 3)
    throw InvalidArgument(n + ": unsupported dtype code " + std::to_string(static_cast<int>(m.dtype)));
}

}  // namespace qme
