// Pillow's BILINEAR resize (Resample.c), reproduced bit for bit on 8-bit RGB rows.
//
// Why Pillow's filter and not a plain area average: every engine was compiled, parity-gated
// and calibrated on pixels from runtime/images.py's resize_to (PIL BILINEAR, antialiased: the
// triangle filter is widened by the downscale factor). Reproducing it exactly keeps the native
// front end's output identical to the Python path, so no decision moves by switching paths.
//
// The arithmetic is Pillow's: coefficients in double, normalised, then rounded to 22-bit
// fixed point; horizontal pass first into 8-bit rows (clipped), vertical pass second.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace sc {

constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coeffs {
    int ksize = 0;
    std::vector<int> bounds;   // per output pixel: first input index, count
    std::vector<int32_t> kk;   // out_size * ksize fixed-point weights
};

inline double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the full box [0, in_size).
inline void precompute_coeffs(int in_size, int out_size, Coeffs& c) {
    double scale = static_cast<double>(in_size) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filterscale;  // bilinear support is 1
    int ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.ksize = ksize;
    c.bounds.assign(static_cast<size_t>(out_size) * 2, 0);
    c.kk.assign(static_cast<size_t>(out_size) * ksize, 0);
    std::vector<double> k(ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        double center = (xx + 0.5) * scale;
        double ww = 0.0;
        double ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; ++x) {
            double w = bilinear_filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < ksize; ++x) {
            double v = x < xmax ? (ww != 0.0 ? k[x] / ww : k[x]) : 0.0;
            c.kk[static_cast<size_t>(xx) * ksize + x] =
                v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                      : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
        }
        c.bounds[xx * 2] = xmin;
        c.bounds[xx * 2 + 1] = xmax;
    }
}

inline uint8_t clip8(int32_t v) {
    v >>= kPrecisionBits;
    return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// One RGB row (in_width pixels) -> out_width pixels.
inline void resample_row(const uint8_t* in, uint8_t* out, int out_width, const Coeffs& c) {
    const int ksize = c.ksize;
    for (int xx = 0; xx < out_width; ++xx) {
        const int xmin = c.bounds[xx * 2];
        const int xmax = c.bounds[xx * 2 + 1];
        const int32_t* k = &c.kk[static_cast<size_t>(xx) * ksize];
        const uint8_t* p = in + xmin * 3;
        int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < xmax; ++x) {
            s0 += p[x * 3 + 0] * k[x];
            s1 += p[x * 3 + 1] * k[x];
            s2 += p[x * 3 + 2] * k[x];
        }
        out[xx * 3 + 0] = clip8(s0);
        out[xx * 3 + 1] = clip8(s1);
        out[xx * 3 + 2] = clip8(s2);
    }
}

// Vertical pass: rows[i] is input row i (row_bytes wide); writes out_height rows into dst.
// The inner loop runs along the row (contiguous), so the compiler vectorises it.
inline void resample_columns(const uint8_t* rows, size_t row_bytes, uint8_t* dst, size_t dst_stride,
                             int out_height, const Coeffs& c, std::vector<int32_t>& acc) {
    acc.resize(row_bytes);
    const int ksize = c.ksize;
    for (int yy = 0; yy < out_height; ++yy) {
        const int ymin = c.bounds[yy * 2];
        const int ymax = c.bounds[yy * 2 + 1];
        const int32_t* k = &c.kk[static_cast<size_t>(yy) * ksize];
        int32_t* a = acc.data();
        for (size_t i = 0; i < row_bytes; ++i) a[i] = 1 << (kPrecisionBits - 1);
        for (int y = 0; y < ymax; ++y) {
            const uint8_t* src = rows + static_cast<size_t>(ymin + y) * row_bytes;
            const int32_t w = k[y];
            for (size_t i = 0; i < row_bytes; ++i) a[i] += src[i] * w;
        }
        uint8_t* out = dst + static_cast<size_t>(yy) * dst_stride;
        for (size_t i = 0; i < row_bytes; ++i) out[i] = clip8(a[i]);
    }
}

}  // namespace sc
