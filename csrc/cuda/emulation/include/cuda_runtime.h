// The CUDA emulation's stand-in for <cuda_runtime.h> (../emulation.h).
#pragma once
#include "../emulation.h"
