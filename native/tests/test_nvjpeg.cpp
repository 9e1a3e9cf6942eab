// ctest -L gpu: the nvJPEG front end against the CPU one on the same JPEG. Exits 77 (ctest:
// skipped) without a usable GPU. Never run yet: the machine this was written on has no GPU.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include <jpeglib.h>

#include "jpeg_cpu.hpp"
#include "nvjpeg_frontend.hpp"

static std::vector<uint8_t> encode(int w, int h) {
    jpeg_compress_struct c;
    jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    unsigned char* out = nullptr;
    unsigned long size = 0;
    jpeg_mem_dest(&c, &out, &size);
    c.image_width = w, c.image_height = h, c.input_components = 3, c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    std::vector<uint8_t> row(static_cast<size_t>(w) * 3);
    while (c.next_scanline < c.image_height) {
        for (int x = 0; x < w * 3; ++x) row[x] = static_cast<uint8_t>((x / 3 * 255 / w + c.next_scanline * 255 / h + x % 3 * 60) & 0xFF);
        JSAMPROW p = row.data();
        jpeg_write_scanlines(&c, &p, 1);
    }
    jpeg_finish_compress(&c);
    std::vector<uint8_t> data(out, out + size);
    std::free(out);
    jpeg_destroy_compress(&c);
    return data;
}

int main() {
    std::string why;
    if (!sc::gpu::available(why)) {
        std::printf("skipped: %s\n", why.c_str());
        return 77;
    }
    int failures = 0;
    for (auto [w, h] : {std::pair{224, 224}, std::pair{320, 240}, std::pair{225, 300}, std::pair{4000, 3000}}) {
        auto jpeg = encode(w, h);
        std::vector<uint8_t> cpu(224 * 224 * 3), gpu(224 * 224 * 3);
        sc::decode_resize(jpeg.data(), jpeg.size(), cpu.data(), 224 * 3, 224, {}, sc::Scale::pil_draft);
        cudaStream_t stream;
        cudaStreamCreate(&stream);
        uint8_t* d = nullptr;
        cudaMalloc(&d, gpu.size());
        sc::gpu::FrontEnd fe(stream);
        auto r = fe.decode_resize(jpeg.data(), jpeg.size(), d, 224 * 3, 224, {});
        fe.synchronize();
        cudaMemcpy(gpu.data(), d, gpu.size(), cudaMemcpyDeviceToHost);
        cudaFree(d);
        cudaStreamDestroy(stream);
        double sum = 0;
        int worst = 0;
        for (size_t i = 0; i < cpu.size(); ++i) {
            int diff = std::abs(int(cpu[i]) - int(gpu[i]));
            sum += diff, worst = diff > worst ? diff : worst;
        }
        // The CPU path decodes large images at a DCT scale, nvJPEG at full size: looser there.
        const double limit = w > 1000 ? 4.0 : 1.0;
        const bool ok = r.status == sc::Status::ok && sum / cpu.size() < limit;
        std::printf("%dx%d: status %d, mean |gpu - cpu| %.3f, max %d: %s\n", w, h, int(r.status), sum / cpu.size(), worst, ok ? "ok" : "FAILED");
        failures += !ok;
    }
    std::printf("%s\n", sc::gpu::nvjpeg_version().c_str());
    return failures ? 1 : 0;
}
