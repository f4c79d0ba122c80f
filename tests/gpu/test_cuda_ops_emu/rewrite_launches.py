#!/usr/bin/env python3
"""Rewrite a .cu file for the emulated host build: `kernel<<<grid, block[, smem[, stream]]>>>(args)`
becomes `::emu::launch(dim3(grid), dim3(block), smem, [&] { kernel(args); })`, the dynamic
shared memory declaration becomes a pointer to the emulator's per-block buffer, and cub's
header is dropped (cuda_emulator.h provides a host stand-in). Usage: rewrite_launches.py IN OUT"""
import sys

src, dst = sys.argv[1], sys.argv[2]
s = open(src).read()
s = s.replace("extern __shared__ __align__(16) unsigned char smem_raw[];",
              "unsigned char* smem_raw = ::emu::g_dyn_smem;")
s = s.replace("#include <cub/device/device_radix_sort.cuh>", "")
out, i = [], 0
while True:
    j = s.find("<<<", i)
    if j < 0:
        out.append(s[i:])
        break
    k, depth = j, 0  # start of the kernel expression (template arguments may contain < >)
    while k > 0:
        c = s[k - 1]
        if c == '>':
            depth += 1
        elif c == '<':
            depth -= 1
        elif c in ' \n\t;{}' and depth == 0:
            break
        k -= 1
    name = s[k:j]
    e = s.find(">>>", j)
    cfg = [x.strip() for x in s[j + 3:e].split(',')]
    while len(cfg) < 3:
        cfg.append('0')
    p = e + 3
    assert s[p] == '(', f"expected '(' after launch configuration in {src}"
    q, depth = p, 0
    while True:
        if s[q] == '(':
            depth += 1
        elif s[q] == ')':
            depth -= 1
            if depth == 0:
                break
        q += 1
    out.append(s[i:k])
    out.append(f"::emu::launch(dim3({cfg[0]}), dim3({cfg[1]}), ({cfg[2]}), [&] {{ {name}({s[p + 1:q]}); }})")
    i = q + 1
open(dst, 'w').write(''.join(out))
