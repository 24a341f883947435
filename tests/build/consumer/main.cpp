// Uses the public API through the installed (or exported) target only: the
// mesh algebra, and a real worker running an op.
#include <cox/cox.hpp>

#include <ATen/ATen.h>

#include <iostream>

int main() {
  cox::Shape mesh({{"dp", 2}, {"tp", 4}});
  cox::Shape row = mesh.slice("dp", 1);
  try {
    mesh.slice("pp", 0);
    return 1;
  } catch (const cox::InvalidArgument&) {
  }
  cox::Controller ctl = cox::Controller::local({.workers = 1});
  cox::DeviceMesh one = ctl.mesh({{"w", 1}});
  const float sum = (cox::ones(one, {4}) * 2.0).sum().item<float>();
  std::cout << "consumer: " << mesh << " row " << row << " rank " << row.rank_of({2}) << " sum " << sum << "\n";
  return row.rank_of({2}) == 6 && sum == 8.0f ? 0 : 1;
}
