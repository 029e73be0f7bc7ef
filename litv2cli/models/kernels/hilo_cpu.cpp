// HiLo's two attentions for CPU inference, compiled on first use by litv2cli/models/native.py.
//
// Why not scaled_dot_product_attention: Lo-Fi is thousands of tiny problems (49 pooled keys,
// head dim 32) and Hi-Fi even tinier ones (2 x 2 windows); the library kernels spend more
// time on blocking and bookkeeping than on arithmetic. Here one thread holds one head's keys
// and values in L1 for all of that image's queries, and the shapes are compile-time constants.
//
// Both kernels read the projections straight from the one GEMM's output (any row stride) with
// its biases not yet added (they are added here, which saves the GEMM a pass over its output),
// and write each head's output into its columns of the attention buffer.
//
// Compile-time constants: HD (head dim, a multiple of 16); KEYS (Lo-Fi keys per image) for
// `lofi`; WIN (window side) for `hifi`. Written with GCC vector extensions, which the compiler
// maps onto the machine's own vector width (-march=native).
#include <stdint.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64)));
#define DV (HD / 16)

static inline v16 splat(float a) { return a - (v16){}; }
static inline v16 vmax(v16 a, v16 b) { return a > b ? a : b; }
static inline v16 load(const float *p) { return *(const v16u *)p; }
static inline void store(float *p, v16 a) { *(v16u *)p = a; }
static inline v16 swap_lanes(v16 a, int k) {  // lane i <- lane i ^ k
    const i16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return __builtin_shuffle(a, lane ^ k);
}
static inline float hmax(v16 a) {
    for (int k = 8; k; k >>= 1) a = vmax(a, swap_lanes(a, k));
    return a[0];
}
static inline float hsum(v16 a) {
    for (int k = 8; k; k >>= 1) a += swap_lanes(a, k);
    return a[0];
}

// e^x for x <= 0 (softmax after subtracting the row maximum): Cody-Waite range reduction and
// a degree-7 polynomial, relative error about 2e-7; x below -87 counts as -87 (e^-87 ~ 1.6e-38,
// nothing next to the row maximum's 1).
static inline v16 vexp(v16 x) {
    x = vmax(x, splat(-87.0f));
    v16 n = (x * splat(1.44269504088896341f) + splat(12582912.0f)) - splat(12582912.0f);  // round
    v16 f = x - n * splat(0.693145751953125f) - n * splat(1.428606765330187045e-06f);
    v16 p = splat(1.9875691500e-4f);
    p = p * f + splat(1.3981999507e-3f);
    p = p * f + splat(8.3334519073e-3f);
    p = p * f + splat(4.1665795894e-2f);
    p = p * f + splat(1.6666665459e-1f);
    p = p * f + splat(5.0000001201e-1f);
    p = p * f * f + f + splat(1.0f);
    i16 two_n = (__builtin_convertvector(n, i16) + 127) << 23;
    return p * (v16)two_n;
}

#ifdef KEYS
#define KV ((KEYS + 15) / 16)  // vectors of keys
#define QB 4                   // queries per step: 4 x KV score accumulators stay in registers

// Every query of image b attends to that image's KEYS keys, per head h:
// out[b, n, h] = softmax(scale * (q[b, n, h] + qb[h]) . (k[b, j, h] + kb[h])) (v[b, j, h] + vb[h]).
// q: N rows of q_row floats per image; k, v: KEYS rows of kv_row floats per image; out: out_row.
extern "C" void lofi(const float *q, const float *q_bias, int64_t q_row,
                     const float *k, const float *k_bias, const float *v, const float *v_bias, int64_t kv_row,
                     float *out, int64_t out_row, int64_t B, int64_t H, int64_t N, float scale)
{
    #pragma omp parallel
    {
        v16 kt[HD][KV];    // scaled keys, transposed: a query's scores are HD broadcast FMAs
        v16 vv[KEYS][DV];
        v16 pad[KV];       // -inf-like scores for the lanes past KEYS
        for (int c = 0; c < KV; c++)
            for (int l = 0; l < 16; l++) pad[c][l] = c * 16 + l < KEYS ? 0.f : -1e30f;
        for (int d = 0; d < HD; d++)
            for (int j = KEYS; j < KV * 16; j++) ((float *)kt[d])[j] = 0.f;
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < B * H; task++) {
            const int64_t b = task / H, h = task % H;
            const float *kb = k + b * KEYS * kv_row + h * HD, *vb = v + b * KEYS * kv_row + h * HD;
            for (int j = 0; j < KEYS; j++)
                for (int u = 0; u < DV; u++) {
                    v16 key = (load(kb + j * kv_row + 16 * u) + load(k_bias + h * HD + 16 * u)) * splat(scale);
                    for (int l = 0; l < 16; l++) ((float *)kt[16 * u + l])[j] = key[l];
                    vv[j][u] = load(vb + j * kv_row + 16 * u) + load(v_bias + h * HD + 16 * u);
                }
            const float *qb = q + b * N * q_row + h * HD;
            float *ob = out + b * N * out_row + h * HD;
            for (int64_t n0 = 0; n0 < N; n0 += QB) {
                const int nq = N - n0 < QB ? (int)(N - n0) : QB;
                float qs[QB][HD] __attribute__((aligned(64)));
                for (int i = 0; i < QB; i++) {
                    const float *qi = qb + (n0 + (i < nq ? i : 0)) * q_row;
                    for (int u = 0; u < DV; u++) store(&qs[i][16 * u], load(qi + 16 * u) + load(q_bias + h * HD + 16 * u));
                }
                v16 s[QB][KV];
                for (int i = 0; i < QB; i++)
                    for (int c = 0; c < KV; c++) s[i][c] = pad[c];
                for (int d = 0; d < HD; d++)
                    for (int i = 0; i < QB; i++) {
                        v16 a = splat(qs[i][d]);
                        for (int c = 0; c < KV; c++) s[i][c] += a * kt[d][c];
                    }
                float p[QB][KV * 16] __attribute__((aligned(64))), norm[QB];
                for (int i = 0; i < QB; i++) {
                    v16 m = s[i][0];
                    for (int c = 1; c < KV; c++) m = vmax(m, s[i][c]);
                    v16 top = splat(hmax(m)), total = splat(0.f);
                    for (int c = 0; c < KV; c++) {
                        v16 e = vexp(s[i][c] - top);
                        total += e;
                        *(v16 *)&p[i][16 * c] = e;
                    }
                    norm[i] = 1.f / hsum(total);
                }
                v16 o[QB][DV];
                for (int i = 0; i < QB; i++)
                    for (int u = 0; u < DV; u++) o[i][u] = splat(0.f);
                for (int j = 0; j < KEYS; j++)
                    for (int i = 0; i < QB; i++) {
                        v16 w = splat(p[i][j]);
                        for (int u = 0; u < DV; u++) o[i][u] += w * vv[j][u];
                    }
                for (int i = 0; i < nq; i++)
                    for (int u = 0; u < DV; u++) store(ob + (n0 + i) * out_row + 16 * u, o[i][u] * splat(norm[i]));
            }
        }
    }
}
#endif

#ifdef WIN
#define T (WIN * WIN)                 // tokens per window
#define TT ((T * T + 15) / 16 * 16)   // its scores, padded to whole vectors

// Self-attention inside each WIN x WIN window of a (B, Hp, Wp) map, per head h. qkv: one row
// of row floats per token holding q, k, v of the H heads (biases in `bias`, same layout).
extern "C" void hifi(const float *qkv, const float *bias, int64_t row, float *out, int64_t out_row,
                     int64_t B, int64_t Hp, int64_t Wp, int64_t H, float scale)
{
    const int64_t rows = Hp / WIN, cols = Wp / WIN;
    #pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < B * rows; task++) {
        const int64_t b = task / rows, r = task % rows;
        for (int64_t c = 0; c < cols; c++) {
            int64_t token[T];
            for (int i = 0; i < WIN; i++)
                for (int j = 0; j < WIN; j++) token[i * WIN + j] = (b * Hp + r * WIN + i) * Wp + c * WIN + j;
            for (int64_t h = 0; h < H; h++) {
                const float *qb = bias + h * HD, *kb = bias + (H + h) * HD, *vb = bias + (2 * H + h) * HD;
                v16 qh[T][DV], kh[T][DV], vh[T][DV];
                for (int t = 0; t < T; t++) {
                    const float *src = qkv + token[t] * row;
                    for (int u = 0; u < DV; u++) {
                        qh[t][u] = (load(src + h * HD + 16 * u) + load(qb + 16 * u)) * splat(scale);
                        kh[t][u] = load(src + (H + h) * HD + 16 * u) + load(kb + 16 * u);
                        vh[t][u] = load(src + (2 * H + h) * HD + 16 * u) + load(vb + 16 * u);
                    }
                }
                float sc[TT] __attribute__((aligned(64)));
                for (int t = 0; t < T; t++) {
                    float top = -1e30f;
                    for (int j = 0; j < T; j++) {
                        v16 dot = qh[t][0] * kh[j][0];
                        for (int u = 1; u < DV; u++) dot += qh[t][u] * kh[j][u];
                        sc[t * T + j] = hsum(dot);
                        top = sc[t * T + j] > top ? sc[t * T + j] : top;
                    }
                    for (int j = 0; j < T; j++) sc[t * T + j] -= top;
                }
                for (int l = T * T; l < TT; l++) sc[l] = 0.f;
                for (int l = 0; l < TT; l += 16) *(v16 *)&sc[l] = vexp(*(v16 *)&sc[l]);
                for (int t = 0; t < T; t++) {
                    float total = 0.f;
                    v16 o[DV];
                    for (int u = 0; u < DV; u++) o[u] = splat(0.f);
                    for (int j = 0; j < T; j++) {
                        total += sc[t * T + j];
                        for (int u = 0; u < DV; u++) o[u] += splat(sc[t * T + j]) * vh[j][u];
                    }
                    for (int u = 0; u < DV; u++) store(out + token[t] * out_row + h * HD + 16 * u, o[u] * splat(1.f / total));
                }
            }
        }
    }
}
#endif
