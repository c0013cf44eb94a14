// The CPU robustness engine of stldec (built and driven by native.py).
//
// One call evaluates a compiled program -- every node of a batch of formulae, children before parents -- on the
// trajectories [n0, n1), L at a time. A node's trace is T rows; a row is one SIMD vector of L lanes (one trajectory
// per lane, GCC/Clang vector extensions), so every operation below is a vector operation, and the live traces of a
// block stay in the L1/L2 cache: only the input and the roots' robustness touch main memory. Windows cost O(1) per
// sample whatever their width (van Herk / Gil-Werman: prefix and suffix extrema over blocks of the window's width),
// and so does the bounded until (the same trick on compositions of the maps f_s(x) = max(A_s, min(phi_s, x)), an
// associative operation).
//
// Semantics are those of semantics.py's docstring; a node's window reads its children only on their domain
// [0, end) (end = T under the textbook convention) and treats samples past it as absent.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace {

constexpr int L = 16;  // lanes: trajectories evaluated together
enum Op : int32_t { ATOM_LE, ATOM_GE, NEG, AND, OR, EVENTUALLY, ALWAYS, UNTIL, UNTIL_INCLUSIVE };
// one program row per node: op, output slot, input slots, variable, window [a, b] (b = -1: unbounded), samples
// needed (t < len), end of the children's domain
enum Field { OP, OUT, IN0, IN1, VAR, A, B, LEN, END, FIELDS };

typedef float RowF __attribute__((vector_size(L * sizeof(float))));
typedef double RowD __attribute__((vector_size(L * sizeof(double))));
template <class R> struct Vec;
template <> struct Vec<float> { using type = RowF; };
template <> struct Vec<double> { using type = RowD; };
template <class R> using Row = typename Vec<R>::type;  // one time step of a node's trace, all lanes

template <class V> inline V lo(V a, V b) { return a < b ? a : b; }
template <class V> inline V hi(V a, V b) { return a > b ? a : b; }
template <bool MAX, class V> inline V ext(V a, V b) { return MAX ? hi(a, b) : lo(a, b); }
// the A part of the composition f1∘f2 of two maps x -> max(A, min(B, x)): max(A1, min(B1, A2))
template <class V> inline V compose_a(V a1, V b1, V a2) { return hi(a1, lo(b1, a2)); }

// out(t), t < len: extremum of c(s) over s in [t+a, t+b] ∩ [0, end); the identity (-inf for max, +inf for min) when
// empty; b < 0: unbounded. P, S: scratch of len + b - a rows.
template <bool MAX, class V>
void window(const V* c, V* out, int a, int b, int len, int end, V* P, V* S) {
    const V id = V{} + (MAX ? -INFINITY : INFINITY);
    if (b < 0 || b >= end - 1) {  // every window reaches the end of the domain: a backward scan
        const int top = end - a - 1;  // the last t whose window is not empty
        for (int t = len - 1; t > top && t >= 0; --t) out[t] = id;
        if (top < 0) return;
        out[top] = c[top + a];
        for (int t = top - 1; t >= 0; --t) out[t] = ext<MAX>(c[t + a], out[t + 1]);
        return;
    }
    const int w = b - a + 1, n = len + w - 1;  // y(i) = c(i + a), i < n; window t is y[t, t + w)
    auto y = [&](int i) { return i + a < end ? c[i + a] : id; };
    for (int k0 = 0; k0 < n; k0 += w) {  // P: extremum from the start of i's block of w; S: to its end
        const int k1 = k0 + w < n ? k0 + w : n;
        P[k0] = y(k0);
        for (int i = k0 + 1; i < k1; ++i) P[i] = ext<MAX>(P[i - 1], y(i));
        S[k1 - 1] = y(k1 - 1);
        for (int i = k1 - 2; i >= k0; --i) S[i] = ext<MAX>(y(i), S[i + 1]);
    }
    for (int t = 0; t < len; ++t) out[t] = ext<MAX>(S[t], P[t + w - 1]);
}

// out(t), t < len: max over s in [t+a, t+b] ∩ [0, end) of min(A(s), min phi[t, s)), -inf when empty, with A = psi
// (strict until) or min(phi, psi) (INCLUSIVE). Scratch: 4 arrays of T + b - a rows.
template <bool INCLUSIVE, class V>
void until(const V* phi, const V* psi, V* out, int a, int b, int len, int end, V* scratch, int stride) {
    V *PA = scratch, *SA = PA + stride, *SB = SA + stride, *M = SB + stride;
    const V none = V{} - INFINITY, all = V{} + INFINITY;
    auto A = [&](int s) { return s >= end ? none : INCLUSIVE ? lo(phi[s], psi[s]) : psi[s]; };  // the map f_s is
    auto B = [&](int s) { return s >= end ? all : phi[s]; };  // (A, phi); the identity (-inf, +inf) past the domain
    if (b < 0 || b >= end - 1) {  // every window reaches the end: W(u) = f_u(W(u+1)), W(end) = -inf; out(t) = W(t+a)
        const int top = end - a - 1;
        for (int t = len - 1; t > top && t >= 0; --t) out[t] = none;
        if (top >= 0) out[top] = A(top + a);
        for (int t = top - 1; t >= 0; --t) out[t] = compose_a(A(t + a), B(t + a), out[t + 1]);
    } else {  // compositions of w maps from block prefixes (PA, with B running) and suffixes (SA, SB): blocks of w
        const int w = b - a + 1, n = len + w - 1;  // map i is f_{i+a}
        for (int k0 = 0; k0 < n; k0 += w) {
            const int k1 = k0 + w < n ? k0 + w : n;
            V pb = B(k0 + a);
            PA[k0] = A(k0 + a);
            for (int i = k0 + 1; i < k1; ++i) {
                PA[i] = compose_a(PA[i - 1], pb, A(i + a));
                pb = lo(pb, B(i + a));
            }
            SA[k1 - 1] = A(k1 - 1 + a);
            SB[k1 - 1] = B(k1 - 1 + a);
            for (int i = k1 - 2; i >= k0; --i) {
                SA[i] = compose_a(A(i + a), B(i + a), SA[i + 1]);
                SB[i] = lo(B(i + a), SB[i + 1]);
            }
        }
        for (int t = 0; t < len; ++t) out[t] = compose_a(SA[t], SB[t], PA[t + w - 1]);
        for (int t = 0; t < len; t += w) out[t] = SA[t];  // there the window is exactly one block
    }
    if (a > 0) {  // min with min phi[t, t+a)
        window<false>(phi, M, 0, a - 1, len, end, PA, SA);
        for (int t = 0; t < len; ++t) out[t] = lo(out[t], M[t]);
    }
}

// dst[0:L] = row with streaming (non-temporal) stores: the result is written once and not read back soon, so it
// bypasses the cache instead of first reading every line it overwrites. dst is aligned like a row.
inline void stream(void* dst, const void* row, size_t bytes) {
    char* d = static_cast<char*>(dst);
    const char* r = static_cast<const char*>(row);
#if defined(__AVX512F__)
    for (size_t k = 0; k < bytes; k += 64) _mm512_stream_si512((__m512i*)(d + k), _mm512_load_si512(r + k));
#elif defined(__AVX__)
    for (size_t k = 0; k < bytes; k += 32)
        _mm256_stream_si256((__m256i*)(d + k), _mm256_load_si256((const __m256i*)(r + k)));
#elif defined(__SSE2__)
    for (size_t k = 0; k < bytes; k += 16)
        _mm_stream_si128((__m128i*)(d + k), _mm_load_si128((const __m128i*)(r + k)));
#else
    std::memcpy(d, r, bytes);
#endif
}

template <class R>
int run(const R* x, int n_vars, int T, int64_t n0, int64_t n1, const int32_t* prog, const double* thr,
        int n_nodes, int n_slots, const int32_t* root_ptr, const int32_t* root_rows, int at_all, R* out, int64_t ld) {
    using V = Row<R>;
    const int stride = 2 * T;  // rows of each of the 4 scratch arrays
    const size_t rows = size_t(n_slots) * T + size_t(n_vars) * T + 4 * size_t(stride);
    auto* mem = static_cast<V*>(std::aligned_alloc(alignof(V), rows * sizeof(V)));
    if (!mem) return 1;
    V *slots = mem, *xb = slots + size_t(n_slots) * T, *scratch = xb + size_t(n_vars) * T;
    bool nan = false;
    for (int64_t b0 = n0; b0 < n1; b0 += L) {
        const int lanes = int(n1 - b0 < L ? n1 - b0 : L);
        for (int v = 0; v < n_vars; ++v)  // the block's input, transposed to (variable, t) rows of lanes
            for (int l = 0; l < L; ++l) {
                const R* src = x + ((b0 + (l < lanes ? l : 0)) * n_vars + v) * T;
                for (int t = 0; t < T; ++t) {
                    xb[v * T + t][l] = src[t];
                    nan |= src[t] != src[t];
                }
            }
        if (nan) break;  // these min/max do not propagate NaN: the caller falls back to the torch engine
        for (int i = 0; i < n_nodes; ++i) {
            const int32_t* p = prog + i * FIELDS;
            V* o = slots + size_t(p[OUT]) * T;
            const V* c0 = p[IN0] >= 0 ? slots + size_t(p[IN0]) * T : nullptr;
            const V* c1 = p[IN1] >= 0 ? slots + size_t(p[IN1]) * T : nullptr;
            const V* xv = xb + size_t(p[VAR]) * T;
            const int len = p[LEN];
            const R c = R(thr[i]);
            switch (p[OP]) {
                case ATOM_LE: for (int t = 0; t < len; ++t) o[t] = c - xv[t]; break;
                case ATOM_GE: for (int t = 0; t < len; ++t) o[t] = xv[t] - c; break;
                case NEG: for (int t = 0; t < len; ++t) o[t] = -c0[t]; break;
                case AND: for (int t = 0; t < len; ++t) o[t] = lo(c0[t], c1[t]); break;
                case OR: for (int t = 0; t < len; ++t) o[t] = hi(c0[t], c1[t]); break;
                case EVENTUALLY: window<true>(c0, o, p[A], p[B], len, p[END], scratch, scratch + stride); break;
                case ALWAYS: window<false>(c0, o, p[A], p[B], len, p[END], scratch, scratch + stride); break;
                case UNTIL: until<false>(c0, c1, o, p[A], p[B], len, p[END], scratch, stride); break;
                default: until<true>(c0, c1, o, p[A], p[B], len, p[END], scratch, stride);
            }
            for (int k = root_ptr[i]; k < root_ptr[i + 1]; ++k)  // node i is formula root_rows[k]: out (B, T, ld)
                for (int t = 0; t < (at_all ? T : 1); ++t) {
                    R* dst = out + (int64_t(root_rows[k]) * (at_all ? T : 1) + t) * ld + b0;
                    if (lanes < L) std::memcpy(dst, &o[t], lanes * sizeof(R));
                    else if (reinterpret_cast<uintptr_t>(dst) % alignof(V) == 0)
                        stream(dst, &o[t], sizeof(V));
                    else std::memcpy(dst, &o[t], sizeof(V));
                }
        }
    }
    std::free(mem);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // the streamed stores are visible to the caller's thread
    return nan ? 2 : 0;
}

}  // namespace

extern "C" {
int stl_lanes() { return L; }
int stl_robustness_f32(const float* x, int n_vars, int T, int64_t n0, int64_t n1, const int32_t* prog,
                       const double* thr, int n_nodes, int n_slots, const int32_t* root_ptr, const int32_t* root_rows,
                       int at_all, float* out, int64_t ld) {
    return run<float>(x, n_vars, T, n0, n1, prog, thr, n_nodes, n_slots, root_ptr, root_rows, at_all, out, ld);
}
int stl_robustness_f64(const double* x, int n_vars, int T, int64_t n0, int64_t n1, const int32_t* prog,
                       const double* thr, int n_nodes, int n_slots, const int32_t* root_ptr, const int32_t* root_rows,
                       int at_all, double* out, int64_t ld) {
    return run<double>(x, n_vars, T, n0, n1, prog, thr, n_nodes, n_slots, root_ptr, root_rows, at_all, out, ld);
}
}
