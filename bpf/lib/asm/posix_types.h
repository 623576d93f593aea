/* Architecture-neutral stand-in for <asm/posix_types.h>. */
#include <asm-generic/posix_types.h>
