// Build information that only the CUDA compiler knows: the architectures compiled in.
#include "ptft_kernels.h"

#define PTFT_STR2(...) #__VA_ARGS__
#define PTFT_STR(...) PTFT_STR2(__VA_ARGS__)

const char* ptft_compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  return PTFT_STR(__CUDA_ARCH_LIST__);  // e.g. "800,900"
#else
  return "unknown";
#endif
}
