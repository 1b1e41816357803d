// Trains nothing: builds a small graph and checks one gradient, through the installed headers.
#include <lotgrad/lotgrad.h>

#include <cmath>
#include <cstdio>

int main() {
  using namespace lotgrad;
  Tensor x = Tensor::from_vector(std::vector<double>{0.5, -1.0, 2.0}, {3}).requires_grad_();
  Tensor y = mul(exp(x), x);  // d/dx = e^x (1 + x)
  y.backward(Tensor::ones({3}, kFloat64));
  double g = x.grad().at({0});
  double want = std::exp(0.5) * 1.5;
  std::printf("consumer: grad %.6f, expected %.6f\n", g, want);
  return std::abs(g - want) < 1e-12 ? 0 : 1;
}
