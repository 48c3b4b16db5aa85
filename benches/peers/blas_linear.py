#!/usr/bin/env python3
"""The peer for `y = x · Wᵀ`: numpy's BLAS (OpenBLAS 0.3.x in the PyPI wheel) at the shapes
of benches/kernels_linear.rs, 1 thread and all threads, median of repeated timings.
Prints one line per case: `name  median_seconds  GFLOP/s  GB/s-of-weights`.
Run through `benches/peers/blas_compare.sh`, which also runs Modula's benchmark."""
import time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


def median_time(f, reps, warm=3):
    for _ in range(warm):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    info = [(i["internal_api"], i.get("version"), i.get("architecture"), i.get("num_threads")) for i in threadpool_info()]
    print("# blas:", info)
    rng = np.random.default_rng(0)
    for threads in (1, None):
        tag = "1thread" if threads else "allthreads"
        with threadpool_limits(limits=threads):
            n = k = 4096
            w = rng.standard_normal((n, k), dtype=np.float32)
            x = rng.standard_normal((1, k), dtype=np.float32)
            t = median_time(lambda: x @ w.T, 15)
            print(f"gemv_4096x4096_f32/m1/numpy_{tag} {t:.6e} {2*n*k/t/1e9:.2f} {4*n*k/t/2**30:.2f}")
            n = k = 1024
            w = rng.standard_normal((n, k), dtype=np.float32)
            for m in (1, 4, 16, 64, 256):
                x = rng.standard_normal((m, k), dtype=np.float32)
                t = median_time(lambda: x @ w.T, 41)
                print(f"linear_1024x1024_f32/numpy_{tag}/{m} {t:.6e} {2*m*n*k/t/1e9:.2f} {4*n*k/t/2**30:.2f}")


if __name__ == "__main__":
    main()
