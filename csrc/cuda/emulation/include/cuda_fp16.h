// The CUDA emulation's stand-in for <cuda_fp16.h> (../emulation.h).
#pragma once
#include "../emulation.h"
