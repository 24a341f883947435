// A tour of the mesh algebra: how a 16-GPU job is carved into data-,
// tensor- and pipeline-parallel groups.
#include <cox/errors.hpp>
#include <cox/shape.hpp>

#include <iostream>
#include <string>

namespace {

std::string list(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

int main() {
  cox::Shape job({{"host", 2}, {"gpu", 8}});
  std::cout << "job " << job << ": ranks " << list(job.ranks()) << "\n";

  // 2 pipeline stages x 2 data-parallel replicas x 4-way tensor parallel.
  cox::Shape mesh = job.flatten("world").split("world", {"pp", "dp", "tp"}, {2, 2, -1});
  std::cout << "mesh " << mesh << "\n";
  for (int64_t stage = 0; stage < mesh.size("pp"); ++stage) {
    cox::Shape s = mesh.slice("pp", stage);
    std::cout << "  stage " << stage << " " << s << ": ranks " << list(s.ranks()) << "\n";
  }
  std::cout << "tensor-parallel groups (all_reduce over tp):\n";
  for (const auto& g : mesh.groups({"tp"})) std::cout << "  " << list(g) << "\n";
  std::cout << "data-parallel groups (gradient averaging over dp):\n";
  for (const auto& g : mesh.groups({"dp"})) std::cout << "  " << list(g) << "\n";

  cox::Shape stage1 = mesh.slice("pp", 1);
  std::cout << "rank 13 is " << list(stage1.coord_of(13)) << " in stage 1 " << stage1
            << ", local index " << stage1.local_index(13) << "\n";

  try {
    mesh.slice("tp", 4);
  } catch (const cox::InvalidArgument& e) {
    std::cout << "and a mistake is caught at the call site: " << e.what() << "\n";
  }
  return 0;
}
