// See nvjpeg_frontend.hpp. The resize reuses the CPU path's coefficient code (pil_resample.hpp),
// uploaded once per (input, output) size pair, so both paths compute the same integer sums;
// nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a level here and there.
#include "nvjpeg_frontend.hpp"

#include <cuda_runtime.h>
#include <nvjpeg.h>

#include <stdexcept>
#include <vector>

#include "pil_resample.hpp"

namespace sc::gpu {
namespace {

const char* nvjpeg_error(nvjpegStatus_t s) {
    switch (s) {
        case NVJPEG_STATUS_NOT_INITIALIZED: return "not initialized";
        case NVJPEG_STATUS_INVALID_PARAMETER: return "invalid parameter";
        case NVJPEG_STATUS_BAD_JPEG: return "bad JPEG";
        case NVJPEG_STATUS_JPEG_NOT_SUPPORTED: return "JPEG not supported";
        case NVJPEG_STATUS_ALLOCATOR_FAILURE: return "allocator failure";
        case NVJPEG_STATUS_EXECUTION_FAILED: return "execution failed";
        case NVJPEG_STATUS_ARCH_MISMATCH: return "architecture mismatch";
        case NVJPEG_STATUS_INTERNAL_ERROR: return "internal error";
        case NVJPEG_STATUS_IMPLEMENTATION_NOT_SUPPORTED: return "implementation not supported";
        case NVJPEG_STATUS_INCOMPLETE_BITSTREAM: return "incomplete bitstream";
        default: return "unknown nvJPEG status";
    }
}

void check_cuda(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

void check_nvjpeg(nvjpegStatus_t s, const char* what) {
    if (s != NVJPEG_STATUS_SUCCESS) throw std::runtime_error(std::string(what) + ": " + nvjpeg_error(s));
}

__device__ inline uint8_t clip8_device(int32_t v) {
    v >>= kPrecisionBits;
    return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// One thread per output byte of a row pass: out[y][x][c] = sum_k in[y][bounds[x]+k][c] * kk[x][k].
__global__ void horizontal_pass(const uint8_t* in, size_t in_stride, uint8_t* out, size_t out_stride, int rows, int out_w,
                                const int* bounds, const int32_t* kk, int ksize) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;  // x * 3 + c
    const int y = blockIdx.y;
    if (i >= out_w * 3 || y >= rows) return;
    const int x = i / 3, c = i % 3;
    const int xmin = bounds[x * 2], xmax = bounds[x * 2 + 1];
    const int32_t* k = kk + static_cast<size_t>(x) * ksize;
    const uint8_t* src = in + y * in_stride + xmin * 3 + c;
    int32_t s = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < xmax; ++t) s += src[t * 3] * k[t];
    out[y * out_stride + i] = clip8_device(s);
}

// One thread per output byte of a column pass: out[y][i] = sum_k in[bounds[y]+k][i] * kk[y][k].
__global__ void vertical_pass(const uint8_t* in, size_t in_stride, uint8_t* out, size_t out_stride, int out_h, int row_bytes,
                              const int* bounds, const int32_t* kk, int ksize) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y;
    if (i >= row_bytes || y >= out_h) return;
    const int ymin = bounds[y * 2], ymax = bounds[y * 2 + 1];
    const int32_t* k = kk + static_cast<size_t>(y) * ksize;
    int32_t s = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < ymax; ++t) s += in[(ymin + t) * in_stride + i] * k[t];
    out[y * out_stride + i] = clip8_device(s);
}

// Device copies of one size pair's coefficients.
struct DeviceCoeffs {
    int in = -1, out = -1, ksize = 0;
    int* bounds = nullptr;
    int32_t* kk = nullptr;
    void release() {
        cudaFree(bounds);
        cudaFree(kk);
        bounds = nullptr, kk = nullptr, in = out = -1;
    }
    void ensure(int in_size, int out_size, cudaStream_t stream) {
        if (in_size == in && out_size == out) return;
        release();
        Coeffs c;
        precompute_coeffs(in_size, out_size, c);
        check_cuda(cudaMalloc(&bounds, c.bounds.size() * sizeof(int)), "cudaMalloc(resize bounds)");
        check_cuda(cudaMalloc(&kk, c.kk.size() * sizeof(int32_t)), "cudaMalloc(resize coefficients)");
        check_cuda(cudaMemcpyAsync(bounds, c.bounds.data(), c.bounds.size() * sizeof(int), cudaMemcpyHostToDevice, stream), "upload bounds");
        check_cuda(cudaMemcpyAsync(kk, c.kk.data(), c.kk.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream), "upload coefficients");
        check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");  // the host vectors die here
        in = in_size, out = out_size, ksize = c.ksize;
    }
};

struct DeviceBuffer {
    uint8_t* ptr = nullptr;
    size_t bytes = 0;
    void ensure(size_t n) {
        if (n <= bytes) return;
        cudaFree(ptr);
        ptr = nullptr, bytes = 0;
        check_cuda(cudaMalloc(&ptr, n), "cudaMalloc(front-end scratch)");
        bytes = n;
    }
    ~DeviceBuffer() { cudaFree(ptr); }
};

}  // namespace

struct FrontEnd::Impl {
    cudaStream_t stream = nullptr;
    nvjpegHandle_t handle = nullptr;
    nvjpegJpegState_t state = nullptr;
    DeviceBuffer decoded, temp;
    DeviceCoeffs ch, cv;
    ~Impl() {
        ch.release();
        cv.release();
        if (state) nvjpegJpegStateDestroy(state);
        if (handle) nvjpegDestroy(handle);
    }
};

FrontEnd::FrontEnd(void* cuda_stream) : impl_(new Impl) {
    impl_->stream = static_cast<cudaStream_t>(cuda_stream);
    check_nvjpeg(nvjpegCreateSimple(&impl_->handle), "nvjpegCreateSimple");
    check_nvjpeg(nvjpegJpegStateCreate(impl_->handle, &impl_->state), "nvjpegJpegStateCreate");
}

FrontEnd::~FrontEnd() = default;

void FrontEnd::synchronize() { check_cuda(cudaStreamSynchronize(impl_->stream), "cudaStreamSynchronize"); }

Result FrontEnd::decode_resize(const uint8_t* data, size_t nbytes, uint8_t* d_dst, size_t d_stride, int size, const Limits& limits) {
    Result r;
    if (nbytes < 3 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF) {
        r.status = Status::not_jpeg;
        r.message = "no JPEG start-of-image marker";
        return r;
    }
    Impl& m = *impl_;
    int components = 0;
    nvjpegChromaSubsampling_t subsampling;
    int widths[NVJPEG_MAX_COMPONENT] = {}, heights[NVJPEG_MAX_COMPONENT] = {};
    nvjpegStatus_t s = nvjpegGetImageInfo(m.handle, data, nbytes, &components, &subsampling, widths, heights);
    if (s != NVJPEG_STATUS_SUCCESS) {
        r.status = s == NVJPEG_STATUS_JPEG_NOT_SUPPORTED ? Status::unsupported : Status::corrupt;
        r.message = std::string("nvJPEG: ") + nvjpeg_error(s);
        return r;
    }
    const int w = widths[0], h = heights[0];
    r.width = r.decoded_width = w;
    r.height = r.decoded_height = h;
    if (static_cast<int64_t>(w) * h > limits.max_pixels) {
        r.status = Status::too_large;
        r.message = "image is " + std::to_string(w) + "x" + std::to_string(h) + " = " + std::to_string(static_cast<int64_t>(w) * h) +
                    " pixels, over the limit of " + std::to_string(limits.max_pixels);
        return r;
    }
    if (std::min(w, h) < limits.min_side) {
        r.status = Status::too_small;
        r.message = "image is " + std::to_string(w) + "x" + std::to_string(h) + ", smaller than " + std::to_string(limits.min_side) + " px on a side";
        return r;
    }
    if (subsampling == NVJPEG_CSS_UNKNOWN || components == 4) {  // CMYK / YCCK: the CPU path handles those
        r.status = Status::unsupported;
        r.message = "nvJPEG front end takes greyscale and YCbCr JPEGs only";
        return r;
    }
    try {
        const size_t row_bytes = static_cast<size_t>(w) * 3;
        const bool direct = w == size && h == size;
        uint8_t* target = direct ? d_dst : (m.decoded.ensure(row_bytes * h), m.decoded.ptr);
        nvjpegImage_t out{};
        out.channel[0] = target;
        out.pitch[0] = static_cast<unsigned int>(direct ? d_stride : row_bytes);
        s = nvjpegDecode(m.handle, m.state, data, nbytes, NVJPEG_OUTPUT_RGBI, &out, m.stream);
        if (s != NVJPEG_STATUS_SUCCESS) {
            r.status = s == NVJPEG_STATUS_JPEG_NOT_SUPPORTED ? Status::unsupported : Status::corrupt;
            r.message = std::string("nvJPEG: ") + nvjpeg_error(s);
            return r;
        }
        if (direct) return r;
        const bool resize_h = w != size, resize_v = h != size;
        const bool vertical_first = resize_h && resize_v && limits.pass_order == PassOrder::pillow13 && (h - size) > 0 &&
                                    (h - size) > (w - size) * 2;
        const dim3 block(256);
        auto grid = [&](int bytes, int rows) { return dim3((bytes + 255) / 256, rows); };
        if (resize_h) m.ch.ensure(w, size, m.stream);
        if (resize_v) m.cv.ensure(h, size, m.stream);
        const size_t out_row = static_cast<size_t>(size) * 3;
        if (!resize_v) {
            horizontal_pass<<<grid(size * 3, h), block, 0, m.stream>>>(m.decoded.ptr, row_bytes, d_dst, d_stride, h, size, m.ch.bounds, m.ch.kk, m.ch.ksize);
        } else if (!resize_h) {
            vertical_pass<<<grid(static_cast<int>(row_bytes), size), block, 0, m.stream>>>(m.decoded.ptr, row_bytes, d_dst, d_stride, size,
                                                                                           static_cast<int>(row_bytes), m.cv.bounds, m.cv.kk, m.cv.ksize);
        } else if (vertical_first) {
            m.temp.ensure(row_bytes * size);
            vertical_pass<<<grid(static_cast<int>(row_bytes), size), block, 0, m.stream>>>(m.decoded.ptr, row_bytes, m.temp.ptr, row_bytes, size,
                                                                                           static_cast<int>(row_bytes), m.cv.bounds, m.cv.kk, m.cv.ksize);
            horizontal_pass<<<grid(size * 3, size), block, 0, m.stream>>>(m.temp.ptr, row_bytes, d_dst, d_stride, size, size, m.ch.bounds, m.ch.kk, m.ch.ksize);
        } else {
            m.temp.ensure(out_row * h);
            horizontal_pass<<<grid(size * 3, h), block, 0, m.stream>>>(m.decoded.ptr, row_bytes, m.temp.ptr, out_row, h, size, m.ch.bounds, m.ch.kk, m.ch.ksize);
            vertical_pass<<<grid(static_cast<int>(out_row), size), block, 0, m.stream>>>(m.temp.ptr, out_row, d_dst, d_stride, size,
                                                                                         static_cast<int>(out_row), m.cv.bounds, m.cv.kk, m.cv.ksize);
        }
        check_cuda(cudaGetLastError(), "resize kernel launch");
    } catch (const std::exception& exc) {
        r.status = Status::too_large;  // out of device memory, or a failed launch
        r.message = exc.what();
    }
    return r;
}

bool available(std::string& why) {
    int devices = 0;
    cudaError_t e = cudaGetDeviceCount(&devices);
    if (e != cudaSuccess || devices == 0) {
        why = e != cudaSuccess ? std::string("CUDA: ") + cudaGetErrorString(e) : "no CUDA device";
        return false;
    }
    nvjpegHandle_t handle = nullptr;
    nvjpegStatus_t s = nvjpegCreateSimple(&handle);
    if (s != NVJPEG_STATUS_SUCCESS) {
        why = std::string("nvJPEG: ") + nvjpeg_error(s);
        return false;
    }
    nvjpegDestroy(handle);
    return true;
}

std::string nvjpeg_version() {
    int major = 0, minor = 0, patch = 0;
    nvjpegGetProperty(MAJOR_VERSION, &major);
    nvjpegGetProperty(MINOR_VERSION, &minor);
    nvjpegGetProperty(PATCH_LEVEL, &patch);
    return "nvJPEG " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

}  // namespace sc::gpu
