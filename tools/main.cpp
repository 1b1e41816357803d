#include <lotgrad/lotgrad.h>
#include <iostream>
int main() { lotgrad::Tensor t = lotgrad::Tensor::ones({2,3}); std::cout << t << "\n"; }
