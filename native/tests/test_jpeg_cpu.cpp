// ctest -L cpu: the C++ core without Python. JPEGs are made here with libjpeg's own encoder.
// (Pixel parity with Pillow is tested from Python: tests/runtime/test_frontend.py.)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <jpeglib.h>

#include "jpeg_cpu.hpp"

static int failures = 0;
#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                            \
        }                                                                          \
    } while (0)

// A smooth test pattern, encoded as JPEG (quality 90, 4:2:0) in the given colour space.
static std::vector<uint8_t> encode(int w, int h, J_COLOR_SPACE space = JCS_RGB) {
    jpeg_compress_struct c;
    jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    unsigned char* out = nullptr;
    unsigned long size = 0;
    jpeg_mem_dest(&c, &out, &size);
    c.image_width = w;
    c.image_height = h;
    c.input_components = space == JCS_GRAYSCALE ? 1 : (space == JCS_CMYK ? 4 : 3);
    c.in_color_space = space;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    std::vector<uint8_t> row(static_cast<size_t>(w) * c.input_components);
    while (c.next_scanline < c.image_height) {
        const int y = static_cast<int>(c.next_scanline);
        for (int x = 0; x < w; ++x)
            for (int k = 0; k < c.input_components; ++k)
                row[static_cast<size_t>(x) * c.input_components + k] = static_cast<uint8_t>((x * 255 / w + y * 255 / h + k * 60) & 0xFF);
        JSAMPROW p = row.data();
        jpeg_write_scanlines(&c, &p, 1);
    }
    jpeg_finish_compress(&c);
    std::vector<uint8_t> data(out, out + size);
    std::free(out);
    jpeg_destroy_compress(&c);
    return data;
}

static sc::Result resize(const std::vector<uint8_t>& jpeg, std::vector<uint8_t>& out, int size,
                         sc::Scale scale = sc::Scale::smallest_at_least, sc::Limits limits = {}) {
    out.assign(static_cast<size_t>(size) * size * 3, 0);
    return sc::decode_resize(jpeg.data(), jpeg.size(), out.data(), static_cast<size_t>(size) * 3, size, limits, scale);
}

int main() {
    std::vector<uint8_t> out;

    // DCT scale: the smallest M/8 at least the target on both sides.
    auto photo = encode(320, 240);
    auto r = resize(photo, out, 224);
    CHECK(r.status == sc::Status::ok);
    CHECK(r.width == 320 && r.height == 240 && r.decoded_width == 320 && r.decoded_height == 240);  // 7/8 would be 210 high
    auto mid = encode(1000, 800);
    r = resize(mid, out, 224);
    CHECK(r.status == sc::Status::ok && r.decoded_width == 375 && r.decoded_height == 300);  // 3/8
    r = resize(mid, out, 224, sc::Scale::pil_draft);
    CHECK(r.status == sc::Status::ok && r.decoded_width == 500 && r.decoded_height == 400);  // Pillow: 1/2
    auto big = encode(4000, 3000);
    r = resize(big, out, 224);
    CHECK(r.status == sc::Status::ok && r.decoded_width == 500 && r.decoded_height == 375);  // 1/8

    // Decode-only (the validators' 224 x 224): the resize is the identity.
    auto validator = encode(224, 224);
    r = resize(validator, out, 224);
    std::vector<uint8_t> decoded;
    auto d = sc::decode(validator.data(), validator.size(), 224, {}, sc::Scale::smallest_at_least, decoded);
    CHECK(r.status == sc::Status::ok && d.status == sc::Status::ok && decoded == out);

    // Greyscale -> RGB with equal channels; CMYK -> RGB.
    auto grey = encode(64, 48, JCS_GRAYSCALE);
    r = resize(grey, out, 32);
    CHECK(r.status == sc::Status::ok && out[0] == out[1] && out[1] == out[2] && out[300] == out[301]);
    auto cmyk = encode(64, 48, JCS_CMYK);
    r = resize(cmyk, out, 32);
    CHECK(r.status == sc::Status::ok);

    // Batch on two threads == one by one.
    std::vector<std::vector<uint8_t>> jpegs = {photo, mid, big, validator, grey};
    std::vector<const uint8_t*> ptrs;
    std::vector<size_t> sizes;
    for (auto& j : jpegs) ptrs.push_back(j.data()), sizes.push_back(j.size());
    const size_t image_bytes = 224 * 224 * 3;
    std::vector<uint8_t> batch(jpegs.size() * image_bytes);
    std::vector<sc::Result> results(jpegs.size());
    sc::decode_resize_batch(ptrs.data(), sizes.data(), jpegs.size(), batch.data(), 224, {}, sc::Scale::smallest_at_least, 2, results.data());
    for (size_t i = 0; i < jpegs.size(); ++i) {
        CHECK(results[i].status == sc::Status::ok);
        resize(jpegs[i], out, 224);
        CHECK(std::memcmp(out.data(), batch.data() + i * image_bytes, image_bytes) == 0);
    }

    // Bad input: a status and a message, never an abort.
    std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 0};
    CHECK(resize(png, out, 224).status == sc::Status::not_jpeg);
    std::vector<uint8_t> truncated(photo.begin(), photo.begin() + photo.size() / 2);
    r = resize(truncated, out, 224);
    CHECK(r.status == sc::Status::corrupt && r.message.find("truncated") != std::string::npos);
    std::vector<uint8_t> garbage = {0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x02, 0x12, 0x34, 0x56};
    CHECK(resize(garbage, out, 224).status == sc::Status::corrupt);
    // A header claiming 60000 x 60000 pixels: refused from the header, before any decoding.
    std::vector<uint8_t> bomb = photo;
    for (size_t i = 0; i + 9 < bomb.size(); ++i) {
        if (bomb[i] == 0xFF && bomb[i + 1] == 0xC0) {  // SOF0: length(2) precision(1) height(2) width(2)
            bomb[i + 5] = 60000 >> 8, bomb[i + 6] = 60000 & 0xFF, bomb[i + 7] = 60000 >> 8, bomb[i + 8] = 60000 & 0xFF;
            break;
        }
    }
    r = resize(bomb, out, 224);
    CHECK(r.status == sc::Status::too_large && r.width == 60000 && r.message.find("3600000000 pixels") != std::string::npos);
    sc::Limits small;
    small.min_side = 300;
    CHECK(resize(photo, out, 224, sc::Scale::smallest_at_least, small).status == sc::Status::too_small);
    // The decoder is reused after every failure: a good image still decodes.
    CHECK(resize(photo, out, 224).status == sc::Status::ok);

    std::printf("%s: %s\n", sc::libjpeg_version().c_str(), failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
