/* FP kernel for bench/emu.sh: gravity steps between 64 bodies (double
   mul, add, fused multiply-add, sqrt, div), a single-precision dot
   product and float-to-int conversions; prints a checksum. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define N 64
#define M 1024
static double px[N], py[N], pz[N], vx[N], vy[N], vz[N], m[N];
static float a[M], b[M];

int main(int argc, char **argv) {
    int iters = argc > 1 ? atoi(argv[1]) : 100;
    for (int i = 0; i < N; i++) {
        px[i] = i * 0.37;
        py[i] = (i * 7 % 13) * 0.5;
        pz[i] = (i % 5) - 2.0;
        m[i] = 1.0 + (i % 3);
    }
    for (int i = 0; i < M; i++) {
        a[i] = i * 0.001f;
        b[i] = 1.0f / (i + 1);
    }
    float s = 0;
    long t = 0;
    for (int it = 0; it < iters; it++) {
        for (int i = 0; i < N; i++)
            for (int j = i + 1; j < N; j++) {
                double dx = px[i] - px[j], dy = py[i] - py[j], dz = pz[i] - pz[j];
                double d2 = dx * dx + dy * dy + dz * dz + 0.01;
                double inv = 1.0 / (d2 * sqrt(d2));
                double fi = m[j] * inv * 0.001, fj = m[i] * inv * 0.001;
                vx[i] -= dx * fi, vy[i] -= dy * fi, vz[i] -= dz * fi;
                vx[j] += dx * fj, vy[j] += dy * fj, vz[j] += dz * fj;
            }
        for (int i = 0; i < N; i++)
            px[i] += vx[i] * 0.01, py[i] += vy[i] * 0.01, pz[i] += vz[i] * 0.01;
        for (int k = 0; k < M; k++)
            s += a[k] * b[(k + it) & (M - 1)];
        t += (long)(px[it % N] * 1000.0);
    }
    double e = 0;
    for (int i = 0; i < N; i++)
        e += m[i] * (vx[i] * vx[i] + vy[i] * vy[i] + vz[i] * vz[i]);
    printf("%.9g %.6g %ld\n", e, s, t);
    return 0;
}
