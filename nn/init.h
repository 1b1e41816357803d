// Seeded initialisers. They write in place under no-grad and bump the version.
#pragma once
#include "../core/random.h"
#include "../core/tensor.h"

namespace lotgrad::nn::init {

void normal_(Tensor& t, Generator& gen, double mean = 0.0, double std = 0.02);
void uniform_(Tensor& t, Generator& gen, double low, double high);
// Glorot: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)); fan from the last two dims.
void xavier_uniform_(Tensor& t, Generator& gen, double gain = 1.0);
void zeros_(Tensor& t);
void ones_(Tensor& t);

}  // namespace lotgrad::nn::init
