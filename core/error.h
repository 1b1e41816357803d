// One exception family for bad input. Messages name the op, every operand's shape and
// dtype, and the rule that failed, e.g.
//   matmul: inner dimensions must match (3 vs 4); operands: a (2, 3) f32, b (4, 5) f32
#pragma once
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace lotgrad {

class Tensor;

// Shape or dtype rule broken by the caller. Derives from std::invalid_argument.
class ShapeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
class DTypeError : public ShapeError {
 public:
  using ShapeError::ShapeError;
};
// Autograd misuse (second backward without retain_graph, saved tensor modified in place).
class AutogradError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// Files that cannot be read or written (names the file, and the line for text formats).
class IOError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "(2, 3) f32" or "(2, 3) f32 non-contiguous"
std::string describe(const Tensor& t);

// Builds "<op>: <rule>; operands: name (shape) dtype, ...".
std::string op_message(const std::string& op, const std::string& rule,
                       std::initializer_list<std::pair<const char*, const Tensor*>> operands);

[[noreturn]] void throw_shape(const std::string& op, const std::string& rule,
                              std::initializer_list<std::pair<const char*, const Tensor*>> operands);
[[noreturn]] void throw_dtype(const std::string& op, const std::string& rule,
                              std::initializer_list<std::pair<const char*, const Tensor*>> operands);

}  // namespace lotgrad
