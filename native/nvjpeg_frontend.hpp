// GPU front end: nvJPEG decode into device memory, then Pillow-exact BILINEAR resize kernels
// writing a device uint8 NHWC slot (an engine's device input buffer). Built only when the
// CUDA toolkit and nvJPEG are found (CMakeLists.txt, cmake/nvjpeg.cmake).
//
// Status: compiled, never run on a GPU (the machine it was written on has none).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "jpeg_cpu.hpp"  // Status, Limits, Result, PassOrder

namespace sc::gpu {

// True when a CUDA device and the nvJPEG library are usable; `why` says what is missing.
bool available(std::string& why);

// One per CUDA stream (an engine slot's): owns the nvJPEG handle/state and device scratch.
class FrontEnd {
public:
    explicit FrontEnd(void* cuda_stream);  // throws std::runtime_error with nvJPEG/CUDA's message
    ~FrontEnd();
    FrontEnd(const FrontEnd&) = delete;
    FrontEnd& operator=(const FrontEnd&) = delete;

    // Decode `data` (host bytes) and resize into the device buffer d_dst (size x size x 3,
    // rows d_stride bytes apart), enqueued on the stream; returns once the work is queued and
    // the host-side Huffman decoding is done. Errors come back as Status, never thrown.
    Result decode_resize(const uint8_t* data, size_t nbytes, uint8_t* d_dst, size_t d_stride, int size, const Limits& limits);

    void synchronize();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// "nvJPEG 13.3.2" (the library loaded at run time).
std::string nvjpeg_version();

}  // namespace sc::gpu
