// See jpeg_cpu.hpp. libjpeg reports fatal errors through error_exit, which must not return:
// ours longjmps back to the setjmp in decode_one(), so a corrupt file never aborts the
// process. Nothing with a destructor lives on the stack between that setjmp and a libjpeg
// call: the per-thread Decoder owns every buffer.
#include "jpeg_cpu.hpp"

#include <algorithm>
#include <atomic>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <thread>

#include <jpeglib.h>  // after <cstdio>: jpeglib.h needs FILE and size_t
#include <jerror.h>

#include "pil_resample.hpp"

namespace sc {
namespace {

struct ErrorMgr {
    jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
    bool truncated;
    bool too_many_scans;
};

struct ProgressMgr {
    jpeg_progress_mgr pub;
    int max_scans;
};

extern "C" void on_error_exit(j_common_ptr cinfo) {
    auto* err = reinterpret_cast<ErrorMgr*>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

// libjpeg's default prints warnings to stderr: from untrusted bytes that is noise a sender
// could print per request. Warnings mean libjpeg recovered from bad data and goes on, as
// Pillow does -- except running out of data, which Pillow refuses as a truncated file.
extern "C" void on_emit_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return;  // trace messages
    auto* err = reinterpret_cast<ErrorMgr*>(cinfo->err);
    cinfo->err->num_warnings++;
    if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
        err->truncated = true;
        (*cinfo->err->format_message)(cinfo, err->message);
        longjmp(err->jump, 1);
    }
}

extern "C" void on_output_message(j_common_ptr) {}

extern "C" void on_progress(j_common_ptr cinfo) {
    if (!cinfo->is_decompressor) return;
    auto* progress = reinterpret_cast<ProgressMgr*>(cinfo->progress);
    auto* dinfo = reinterpret_cast<j_decompress_ptr>(cinfo);
    if (dinfo->input_scan_number > progress->max_scans) {
        auto* err = reinterpret_cast<ErrorMgr*>(cinfo->err);
        err->too_many_scans = true;
        std::snprintf(err->message, sizeof err->message, "progressive JPEG with more than %d scans", progress->max_scans);
        longjmp(err->jump, 1);
    }
}

// One per thread, reused from image to image: creating a decompressor allocates its memory
// pools, which costs as much as decoding a small JPEG's headers.
struct Decoder {
    jpeg_decompress_struct cinfo{};
    ErrorMgr err{};
    ProgressMgr progress{};
    bool created = false;
    std::vector<uint8_t> rows;   // decoded rows, horizontally resampled when the width changes
    std::vector<uint8_t> lines;  // scanlines as libjpeg writes them (CMYK, or before the horizontal pass)
    std::vector<uint8_t> tmp;    // after the vertical pass, when it runs first
    std::vector<int32_t> acc;    // vertical pass accumulators
    Coeffs horizontal, vertical;
    int h_in = -1, h_out = -1, v_in = -1, v_out = -1;

    ~Decoder() {
        if (created) jpeg_destroy_decompress(&cinfo);
    }

    bool create() {
        if (created) return true;
        cinfo.err = jpeg_std_error(&err.pub);
        err.pub.error_exit = on_error_exit;
        err.pub.emit_message = on_emit_message;
        err.pub.output_message = on_output_message;
        if (setjmp(err.jump)) return false;  // out of memory while creating
        jpeg_create_decompress(&cinfo);
        progress.pub.progress_monitor = on_progress;
        cinfo.progress = &progress.pub;
        created = true;
        return true;
    }

    const Coeffs& coeffs_h(int in, int out) {
        if (in != h_in || out != h_out) precompute_coeffs(in, out, horizontal), h_in = in, h_out = out;
        return horizontal;
    }
    const Coeffs& coeffs_v(int in, int out) {
        if (in != v_in || out != v_out) precompute_coeffs(in, out, vertical), v_in = in, v_out = out;
        return vertical;
    }
};

Decoder& this_thread_decoder() {
    thread_local Decoder decoder;
    return decoder;
}

// Pillow reads CMYK JPEGs as "CMYK;I" (Adobe's inverted convention) and converts with
// cmyk2rgb (Convert.c); the same integer arithmetic here.
inline uint8_t muldiv255(int a, int b) {
    int tmp = a * b + 128;
    return static_cast<uint8_t>(((tmp >> 8) + tmp) >> 8);
}

void cmyk_row_to_rgb(const uint8_t* in, uint8_t* out, int width) {
    for (int x = 0; x < width; ++x, in += 4, out += 3) {
        const int nk = in[3];  // 255 - (255 - k): Pillow inverts, then takes 255 - K
        for (int c = 0; c < 3; ++c) {
            int v = nk - muldiv255(255 - in[c], nk);
            out[c] = static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
        }
    }
}

void choose_scale(int width, int height, int target, Scale scale, unsigned& num, unsigned& denom) {
    num = 1, denom = 1;
    if (target <= 0) return;
    if (scale == Scale::pil_draft) {
        const int s = std::min(width / target, height / target);
        for (int d : {8, 4, 2, 1}) {
            if (s >= d) {
                denom = static_cast<unsigned>(d);
                return;
            }
        }
        return;
    }
    // libjpeg-turbo's output size for M/8 is ceil(side * M / 8).
    for (unsigned m = 1; m <= 8; ++m) {
        const int64_t w = (static_cast<int64_t>(width) * m + 7) / 8, h = (static_cast<int64_t>(height) * m + 7) / 8;
        if (w >= target && h >= target) {
            num = m, denom = 8;
            return;
        }
    }
    num = 1, denom = 1;  // smaller than the target: decode at full size, the resize scales up
}

Status classify_error(int msg_code) {
    switch (msg_code) {
        case JERR_BAD_PRECISION:      // 12-/16-bit samples: this 8-bit build cannot
        case JERR_SOF_UNSUPPORTED:    // lossless / hierarchical processes
        case JERR_CONVERSION_NOTIMPL: // unusual component/colour-space combinations
        case JERR_NOT_COMPILED:
            return Status::unsupported;
        case JERR_IMAGE_TOO_BIG:
        case JERR_WIDTH_OVERFLOW:
            return Status::too_large;
        default:
            return Status::corrupt;
    }
}

// The output side of one decode: either resize into dst (target > 0) or keep the decoded
// pixels in *out.
struct Sink {
    int target = 0;
    uint8_t* dst = nullptr;
    size_t dst_stride = 0;
    std::vector<uint8_t>* out = nullptr;
    int draft_size = 0;  // decode(): the DCT scale target
};

Result decode_one(Decoder& d, const uint8_t* data, size_t nbytes, const Limits& limits, Scale scale, const Sink& sink) {
    Result r;
    if (nbytes < 3 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF) {
        r.status = Status::not_jpeg;
        r.message = "no JPEG start-of-image marker";
        return r;
    }
    if (nbytes > std::numeric_limits<unsigned long>::max()) {
        r.status = Status::too_large;
        r.message = "JPEG over the decoder's size limit";
        return r;
    }
    if (!d.create()) {
        r.status = Status::corrupt;
        r.message = "libjpeg could not create a decompressor (out of memory)";
        return r;
    }
    j_decompress_ptr cinfo = &d.cinfo;
    d.err.truncated = false;
    d.err.too_many_scans = false;
    d.err.message[0] = '\0';
    d.progress.max_scans = limits.max_scans;
    // Everything the error path reads lives in `d` (memory, not registers): see setjmp(3) on
    // locals modified between setjmp and longjmp.
    if (setjmp(d.err.jump)) {
        jpeg_abort_decompress(cinfo);
        Result e;
        e.width = static_cast<int>(cinfo->image_width);
        e.height = static_cast<int>(cinfo->image_height);
        if (d.err.truncated) {
            e.status = Status::corrupt;
            e.message = "truncated JPEG (libjpeg: " + std::string(d.err.message) + ")";
        } else if (d.err.too_many_scans) {
            e.status = Status::corrupt;
            e.message = d.err.message;
        } else {
            e.status = classify_error(d.err.pub.msg_code);
            e.message = "libjpeg: " + std::string(d.err.message);
        }
        return e;
    }
    jpeg_mem_src(cinfo, data, static_cast<unsigned long>(nbytes));
    jpeg_read_header(cinfo, TRUE);
    r.width = static_cast<int>(cinfo->image_width);
    r.height = static_cast<int>(cinfo->image_height);
    const int64_t pixels = static_cast<int64_t>(r.width) * r.height;
    if (pixels > limits.max_pixels) {
        jpeg_abort_decompress(cinfo);
        r.status = Status::too_large;
        r.message = "image is " + std::to_string(r.width) + "x" + std::to_string(r.height) + " = " + std::to_string(pixels) +
                    " pixels, over the limit of " + std::to_string(limits.max_pixels);
        return r;
    }
    if (std::min(r.width, r.height) < limits.min_side) {
        jpeg_abort_decompress(cinfo);
        r.status = Status::too_small;
        r.message = "image is " + std::to_string(r.width) + "x" + std::to_string(r.height) + ", smaller than " +
                    std::to_string(limits.min_side) + " px on a side";
        return r;
    }
    const bool cmyk = cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK;
    cinfo->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;  // greyscale and RGB/YCbCr -> RGB
    unsigned num, denom;
    choose_scale(r.width, r.height, sink.target > 0 ? sink.target : sink.draft_size, scale, num, denom);
    cinfo->scale_num = num;
    cinfo->scale_denom = denom;
    jpeg_start_decompress(cinfo);
    const int ow = static_cast<int>(cinfo->output_width), oh = static_cast<int>(cinfo->output_height);
    const int comps = cinfo->output_components;
    r.decoded_width = ow;
    r.decoded_height = oh;

    // Where decoded row y goes, and how. `rows` holds RGB rows of `row_w` pixels.
    const int target = sink.target;
    const bool resize_h = target > 0 && ow != target;
    const bool resize_v = target > 0 && oh != target;
    // Pillow 13 runs the vertical pass first when the height shrinks by more than twice what
    // the width does; the rounding of the intermediate rows then differs, so follow it.
    const bool vertical_first = resize_h && resize_v && limits.pass_order == PassOrder::pillow13 &&
                                (oh - target) > 0 && (oh - target) > (ow - target) * 2;
    const bool h_while_decoding = resize_h && !vertical_first;
    const int row_w = h_while_decoding ? target : ow;
    const size_t row_bytes = static_cast<size_t>(row_w) * 3;
    uint8_t* rows;
    size_t stride;
    if (target == 0) {
        sink.out->resize(static_cast<size_t>(oh) * row_bytes);
        rows = sink.out->data(), stride = row_bytes;
    } else if (!resize_v && !vertical_first) {
        rows = sink.dst, stride = sink.dst_stride;  // the last pass writes the caller's buffer
    } else {
        d.rows.resize(static_cast<size_t>(oh) * row_bytes);
        rows = d.rows.data(), stride = row_bytes;
    }
    const Coeffs* ch = resize_h ? &d.coeffs_h(ow, target) : nullptr;
    // Scanlines go straight to their row unless they need converting (CMYK) or resampling.
    const bool direct = !cmyk && !h_while_decoding;
    constexpr int kBatchLines = 16;
    const size_t line_bytes = static_cast<size_t>(ow) * comps;
    if (!direct) d.lines.resize(line_bytes * kBatchLines + (cmyk && h_while_decoding ? static_cast<size_t>(ow) * 3 : 0));
    JSAMPROW ptrs[kBatchLines];
    while (cinfo->output_scanline < cinfo->output_height) {
        const int y0 = static_cast<int>(cinfo->output_scanline);
        const int want = std::min(kBatchLines, oh - y0);
        for (int i = 0; i < want; ++i)
            ptrs[i] = direct ? rows + static_cast<size_t>(y0 + i) * stride : d.lines.data() + static_cast<size_t>(i) * line_bytes;
        const int got = static_cast<int>(jpeg_read_scanlines(cinfo, ptrs, static_cast<JDIMENSION>(want)));
        if (direct) continue;
        for (int i = 0; i < got; ++i) {
            const uint8_t* line = ptrs[i];
            uint8_t* row = rows + static_cast<size_t>(y0 + i) * stride;
            if (cmyk && h_while_decoding) {
                uint8_t* rgb = d.lines.data() + line_bytes * kBatchLines;
                cmyk_row_to_rgb(line, rgb, ow);
                resample_row(rgb, row, target, *ch);
            } else if (cmyk) {
                cmyk_row_to_rgb(line, row, ow);
            } else {
                resample_row(line, row, target, *ch);
            }
        }
    }
    // Every row is out; what follows the last scan (trailing markers, padding) is not needed.
    jpeg_abort_decompress(cinfo);
    if (vertical_first) {
        // rows: oh x ow -> tmp: target x ow -> dst: target x target
        const Coeffs& cv = d.coeffs_v(oh, target);
        d.tmp.resize(static_cast<size_t>(target) * row_bytes);
        resample_columns(rows, row_bytes, d.tmp.data(), row_bytes, target, cv, d.acc);
        for (int y = 0; y < target; ++y)
            resample_row(d.tmp.data() + static_cast<size_t>(y) * row_bytes, sink.dst + static_cast<size_t>(y) * sink.dst_stride, target, *ch);
    } else if (resize_v) {
        const Coeffs& cv = d.coeffs_v(oh, target);
        resample_columns(rows, row_bytes, sink.dst, sink.dst_stride, target, cv, d.acc);
    }
    return r;
}

// The buffers grow with the image: a failed allocation is an image too large for this machine.
Result guarded(const uint8_t* data, size_t nbytes, const Limits& limits, Scale scale, const Sink& sink) {
    try {
        return decode_one(this_thread_decoder(), data, nbytes, limits, scale, sink);
    } catch (const std::bad_alloc&) {
        Decoder& d = this_thread_decoder();
        if (d.created) jpeg_abort_decompress(&d.cinfo);
        Result r;
        r.status = Status::too_large;
        r.message = "not enough memory to decode the image";
        return r;
    }
}

#define SC_STR2(x) #x
#define SC_STR(x) SC_STR2(x)

}  // namespace

Result decode_resize(const uint8_t* data, size_t nbytes, uint8_t* dst, size_t dst_stride, int size,
                     const Limits& limits, Scale scale) {
    Sink sink;
    sink.target = size;
    sink.dst = dst;
    sink.dst_stride = dst_stride;
    return guarded(data, nbytes, limits, scale, sink);
}

Result decode(const uint8_t* data, size_t nbytes, int draft_size, const Limits& limits, Scale scale,
              std::vector<uint8_t>& out) {
    Sink sink;
    sink.out = &out;
    sink.draft_size = draft_size;
    return guarded(data, nbytes, limits, scale, sink);
}

void decode_resize_batch(const uint8_t* const* data, const size_t* nbytes, size_t n, uint8_t* dst, int size,
                         const Limits& limits, Scale scale, int threads, Result* results) {
    const size_t image_bytes = static_cast<size_t>(size) * size * 3;
    std::atomic<size_t> next{0};
    auto work = [&]() {
        for (size_t i; (i = next.fetch_add(1)) < n;)
            results[i] = decode_resize(data[i], nbytes[i], dst + i * image_bytes, static_cast<size_t>(size) * 3, size, limits, scale);
    };
    const size_t workers = std::min<size_t>(std::max(threads, 1), n);
    std::vector<std::thread> pool;
    pool.reserve(workers > 0 ? workers - 1 : 0);
    for (size_t k = 1; k < workers; ++k) {
        try {
            pool.emplace_back(work);
        } catch (const std::exception&) {  // no thread to be had: the ones running share the work
            break;
        }
    }
    work();
    for (auto& t : pool) t.join();
}

void resize_rgb(const uint8_t* src, int width, int height, size_t src_stride, uint8_t* dst, size_t dst_stride, int size,
                PassOrder order) {
    Decoder& d = this_thread_decoder();  // its buffers and cached coefficients, not its libjpeg state
    const bool resize_h = width != size, resize_v = height != size;
    const size_t src_bytes = static_cast<size_t>(width) * 3;
    if (!resize_h && !resize_v) {
        for (int y = 0; y < size; ++y) std::memcpy(dst + y * dst_stride, src + y * src_stride, src_bytes);
        return;
    }
    const bool vertical_first = resize_h && resize_v && order == PassOrder::pillow13 && (height - size) > 0 &&
                                (height - size) > (width - size) * 2;
    if (!resize_v) {
        const Coeffs& ch = d.coeffs_h(width, size);
        for (int y = 0; y < height; ++y) resample_row(src + y * src_stride, dst + y * dst_stride, size, ch);
        return;
    }
    const Coeffs& cv = d.coeffs_v(height, size);
    if (!resize_h) {
        // resample_columns wants contiguous rows: src rows are, when the stride is the width.
        if (src_stride == src_bytes) {
            resample_columns(src, src_bytes, dst, dst_stride, size, cv, d.acc);
            return;
        }
    }
    if (vertical_first) {
        d.rows.resize(static_cast<size_t>(height) * src_bytes);
        for (int y = 0; y < height; ++y) std::memcpy(d.rows.data() + y * src_bytes, src + y * src_stride, src_bytes);
        d.tmp.resize(static_cast<size_t>(size) * src_bytes);
        resample_columns(d.rows.data(), src_bytes, d.tmp.data(), src_bytes, size, cv, d.acc);
        const Coeffs& ch = d.coeffs_h(width, size);
        for (int y = 0; y < size; ++y) resample_row(d.tmp.data() + y * src_bytes, dst + y * dst_stride, size, ch);
        return;
    }
    const size_t row_bytes = static_cast<size_t>(resize_h ? size : width) * 3;
    d.rows.resize(static_cast<size_t>(height) * row_bytes);
    if (resize_h) {
        const Coeffs& ch = d.coeffs_h(width, size);
        for (int y = 0; y < height; ++y) resample_row(src + y * src_stride, d.rows.data() + y * row_bytes, size, ch);
    } else {
        for (int y = 0; y < height; ++y) std::memcpy(d.rows.data() + y * row_bytes, src + y * src_stride, row_bytes);
    }
    resample_columns(d.rows.data(), row_bytes, dst, dst_stride, size, cv, d.acc);
}

std::string libjpeg_version() {
#ifdef LIBJPEG_TURBO_VERSION
    return "libjpeg-turbo " SC_STR(LIBJPEG_TURBO_VERSION);
#else
    return "libjpeg " + std::to_string(JPEG_LIB_VERSION);
#endif
}

}  // namespace sc
