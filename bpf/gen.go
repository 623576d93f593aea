package bpf

// The eBPF objects are generated from datapath.c with clang-14 and committed,
// so building Weft needs no C toolchain; `make generate` rebuilds them and CI
// fails when the committed files differ. lib/asm holds architecture-neutral
// stand-ins for <asm/*.h> so the output does not depend on the build host.
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -target bpfel -cflags "-O2 -g -Wall -Werror -I./lib" -type event datapath datapath.c
