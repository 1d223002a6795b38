/* The CPU's float32 FMA throughput, measured: each OpenMP thread runs 12 independent
 * chains of vector FMAs (enough to hide the FMA latency on current x86 cores), widest
 * vectors the compiler was told of (-mavx512f: 16 lanes, else -mavx2 -mfma: 8 lanes).
 * Prints "GFLOP/s threads lanes". Built and run by benchmarks/gemm.py. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMADD _mm512_fmadd_ps
#define ADD _mm512_add_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMADD _mm256_fmadd_ps
#define ADD _mm256_add_ps
#endif
#define CHAINS 12

int main(int argc, char **argv) {
  long iters = argc > 1 ? atol(argv[1]) : 100000000L;
  float sink = 0.0f;
  double t0 = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
  {
    vec acc[CHAINS];
    const vec m = SET1(0.9999999f), c = SET1(1e-7f);
    for (int k = 0; k < CHAINS; k++) acc[k] = SET1(1.0f + k);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
      for (int k = 0; k < CHAINS; k++) acc[k] = FMADD(acc[k], m, c);
    }
    vec s = acc[0];
    for (int k = 1; k < CHAINS; k++) s = ADD(s, acc[k]);
    float out[LANES];
    memcpy(out, &s, sizeof out);
    for (int k = 0; k < LANES; k++) sink += out[k];
  }
  double dt = omp_get_wtime() - t0;
  int threads = omp_get_max_threads();
  printf("%.1f %d %d %g\n", 2.0 * CHAINS * LANES * (double)iters * threads / dt / 1e9, threads,
         LANES, sink);
  return 0;
}
