/* Architecture-neutral stand-in for <asm/types.h>: BPF objects must not depend
 * on the build machine's multiarch include directory. */
#include <asm-generic/types.h>
