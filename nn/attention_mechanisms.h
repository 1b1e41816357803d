// Factories of the built-in attention mechanisms (one file each: nn/attention_<name>.cpp).
#pragma once
#include "attention.h"

namespace lotgrad::nn {

std::shared_ptr<AttentionMechanism> make_softmax_attention(const AttentionOptions&, Generator&);
std::shared_ptr<AttentionMechanism> make_linear_attention(const AttentionOptions&, Generator&);
std::shared_ptr<AttentionMechanism> make_performer_attention(const AttentionOptions&, Generator&);
std::shared_ptr<AttentionMechanism> make_nystromformer_attention(const AttentionOptions&, Generator&);
std::shared_ptr<AttentionMechanism> make_lotformer_attention(const AttentionOptions&, Generator&);
std::shared_ptr<AttentionMechanism> make_sinkformer_attention(const AttentionOptions&, Generator&);
std::shared_ptr<AttentionMechanism> make_espformer_attention(const AttentionOptions&, Generator&);

}  // namespace lotgrad::nn
