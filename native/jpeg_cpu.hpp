// CPU JPEG front end: libjpeg-turbo decode with DCT scaling, Pillow-exact bilinear resize
// straight into a caller's uint8 NHWC buffer. No Python in here (module.cpp binds it), so the
// ctest programs exercise it directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sc {

// What happened to one image. The Python side maps these onto streetcascade's error tree
// (too_large -> ImageTooLarge, corrupt/too_small -> BadInput) and hands not_jpeg and
// unsupported to the Python (PIL) path, which knows every other format and JPEG variant.
enum class Status : int {
    ok = 0,
    not_jpeg = 1,     // no SOI marker: PNG, WebP, ... (the Python path decodes those)
    unsupported = 2,  // a JPEG this build cannot decode (e.g. 12-bit): the Python path tries
    too_large = 3,    // over max_pixels, from the header, before any pixel is decoded
    too_small = 4,    // a side under min_side
    corrupt = 5,      // libjpeg refused the data, or the file ended early (truncated)
};

// The order of Pillow's two resize passes, which decides the last bit of some pixels.
enum class PassOrder : int {
    horizontal_first = 0,  // Pillow <= 12: always horizontal, then vertical
    // Pillow >= 13: vertical first when the height shrinks by more than twice what the width does
    pillow13 = 1,
};

struct Limits {
    int64_t max_pixels = 64'000'000;
    int min_side = 1;
    // Progressive JPEGs can carry thousands of tiny scans, each a full pass over the
    // coefficients (a CPU bomb in a few KB). libjpeg-turbo's TurboJPEG API stops at 500 scans
    // (TJPARAM_SCANLIMIT); so do we.
    int max_scans = 500;
    PassOrder pass_order = PassOrder::pillow13;
};

// How the decode size is chosen before the resize.
enum class Scale : int {
    // The smallest M/8 (M = 1..8) whose output is at least the target on both sides.
    smallest_at_least = 0,
    // Pillow's Image.draft: 1/1, 1/2, 1/4 or 1/8, from min(width // target, height // target).
    // The decode size runtime/images.py gets, for bit-identical decode_image() output.
    pil_draft = 1,
};

struct Result {
    Status status = Status::ok;
    std::string message;  // one line; empty when ok
    int width = 0;        // the JPEG's own size (from its header), when it could be read
    int height = 0;
    int decoded_width = 0;  // after DCT scaling
    int decoded_height = 0;
};

// Decode one JPEG and resize it (Pillow BILINEAR) to size x size RGB into dst, whose rows are
// dst_stride bytes apart. Never throws; thread-safe (each thread keeps its own decoder).
Result decode_resize(const uint8_t* data, size_t nbytes, uint8_t* dst, size_t dst_stride, int size,
                     const Limits& limits, Scale scale);

// Decode one JPEG to RGB at the DCT scale `draft_size` asks for (0: full size), into out
// (resized to decoded_height * decoded_width * 3). Never throws.
Result decode(const uint8_t* data, size_t nbytes, int draft_size, const Limits& limits, Scale scale,
              std::vector<uint8_t>& out);

// Decode + resize n images into dst[n, size, size, 3] on `threads` threads (the calling one
// included). results[i] says what happened to image i; a failed image leaves its slot as it was.
void decode_resize_batch(const uint8_t* const* data, const size_t* nbytes, size_t n, uint8_t* dst, int size,
                         const Limits& limits, Scale scale, int threads, Result* results);

// Pillow-exact BILINEAR resize of an RGB array (src: height x width x 3, rows src_stride bytes
// apart) to size x size into dst. For images that arrive decoded (PNG, WebP, arrays).
void resize_rgb(const uint8_t* src, int width, int height, size_t src_stride, uint8_t* dst, size_t dst_stride, int size,
                PassOrder order);

// "libjpeg-turbo 2.1.5" (the headers this was compiled against), for `streetcascade info`.
std::string libjpeg_version();

}  // namespace sc
