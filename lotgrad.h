// lotgrad: the public umbrella header. Layers: core <- ops <- nn <- models; optim needs core.
#pragma once
#include "core/autograd.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/iter.h"
#include "core/parallel.h"
#include "core/random.h"
#include "core/tensor.h"
