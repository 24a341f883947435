// Uses the public API through the installed (or exported) target only.
#include <cox/errors.hpp>
#include <cox/shape.hpp>

#include <iostream>

int main() {
  cox::Shape mesh({{"dp", 2}, {"tp", 4}});
  cox::Shape row = mesh.slice("dp", 1);
  try {
    mesh.slice("pp", 0);
    return 1;
  } catch (const cox::InvalidArgument&) {
  }
  std::cout << "consumer: " << mesh << " row " << row << " rank " << row.rank_of({2}) << "\n";
  return row.rank_of({2}) == 6 ? 0 : 1;
}
