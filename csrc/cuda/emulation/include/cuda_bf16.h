// The CUDA emulation's stand-in for <cuda_bf16.h> (../emulation.h).
#pragma once
#include "../emulation.h"
