/* The emulated device stands in for the CUDA toolkit header of this name. */
#include "../cuda_emulation.h"
