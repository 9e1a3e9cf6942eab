// streetcascade._native: the Python face of jpeg_cpu.hpp. Every call releases the GIL while
// it decodes; errors come back as (status, message) pairs that runtime/frontend.py maps onto
// streetcascade's error tree (or hands to the Python path), so no C++ exception crosses here.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <memory>
#include <new>
#include <string>
#include <vector>

#include "jpeg_cpu.hpp"
#ifdef STREETCASCADE_WITH_CUDA
#include "nvjpeg_frontend.hpp"
#endif

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using Image = nb::ndarray<uint8_t, nb::shape<-1, -1, 3>, nb::c_contig, nb::device::cpu>;
using Batch = nb::ndarray<uint8_t, nb::shape<-1, -1, -1, 3>, nb::c_contig, nb::device::cpu>;

sc::PassOrder make_order(int order) {
    if (order != 0 && order != 1) throw nb::value_error("pass_order must be 0 (Pillow <= 12) or 1 (Pillow >= 13)");
    return static_cast<sc::PassOrder>(order);
}

sc::Limits make_limits(int64_t max_pixels, int min_side, int max_scans, int pass_order) {
    sc::Limits limits;
    limits.max_pixels = max_pixels;
    limits.min_side = min_side;
    limits.max_scans = max_scans;
    limits.pass_order = make_order(pass_order);
    return limits;
}

sc::Scale make_scale(int scale) {
    if (scale != 0 && scale != 1) throw nb::value_error("scale must be 0 (smallest M/8 at least the target) or 1 (Pillow draft)");
    return static_cast<sc::Scale>(scale);
}

nb::tuple status_of(const sc::Result& r) {
    return nb::make_tuple(static_cast<int>(r.status), r.message);
}

nb::tuple py_decode(nb::bytes data, int draft_size, int64_t max_pixels, int min_side, int max_scans, int scale, int pass_order) {
    const auto* ptr = static_cast<const uint8_t*>(data.data());
    const size_t n = data.size();
    const sc::Limits limits = make_limits(max_pixels, min_side, max_scans, pass_order);
    const sc::Scale s = make_scale(scale);
    auto pixels = std::make_unique<std::vector<uint8_t>>();
    sc::Result r;
    {
        nb::gil_scoped_release release;
        r = sc::decode(ptr, n, draft_size, limits, s, *pixels);
    }
    if (r.status != sc::Status::ok) return nb::make_tuple(static_cast<int>(r.status), r.message, nb::none());
    auto* owned = pixels.release();
    nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<uint8_t>*>(p); });
    const size_t shape[3] = {static_cast<size_t>(r.decoded_height), static_cast<size_t>(r.decoded_width), 3};
    nb::ndarray<nb::numpy, uint8_t, nb::ndim<3>> array(owned->data(), 3, shape, owner);
    return nb::make_tuple(0, std::string(), array);
}

nb::tuple py_decode_resize_into(nb::bytes data, Image out, int64_t max_pixels, int min_side, int max_scans, int scale, int pass_order) {
    if (out.shape(0) != out.shape(1) || out.shape(0) == 0) throw nb::value_error("out must be a square, non-empty [size, size, 3] uint8 array");
    const auto* ptr = static_cast<const uint8_t*>(data.data());
    const size_t n = data.size();
    const int size = static_cast<int>(out.shape(0));
    const sc::Limits limits = make_limits(max_pixels, min_side, max_scans, pass_order);
    const sc::Scale s = make_scale(scale);
    sc::Result r;
    {
        nb::gil_scoped_release release;
        r = sc::decode_resize(ptr, n, out.data(), static_cast<size_t>(size) * 3, size, limits, s);
    }
    return status_of(r);
}

nb::list py_decode_resize_batch(nb::sequence images, Batch out, int threads, int64_t max_pixels, int min_side, int max_scans, int scale, int pass_order) {
    const size_t n = nb::len(images);
    if (out.shape(0) < n) throw nb::value_error("out holds fewer images than given");
    if (out.shape(1) != out.shape(2) || out.shape(1) == 0) throw nb::value_error("out must be [batch, size, size, 3] uint8");
    std::vector<const uint8_t*> ptrs(n);
    std::vector<size_t> sizes(n);
    std::vector<nb::bytes> keep;  // the sequence could be mutated by another thread meanwhile
    keep.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        nb::handle item = images[i];
        if (!nb::isinstance<nb::bytes>(item)) throw nb::type_error("images must be bytes objects");
        keep.push_back(nb::borrow<nb::bytes>(item));
        ptrs[i] = static_cast<const uint8_t*>(keep.back().data());
        sizes[i] = keep.back().size();
    }
    const int size = static_cast<int>(out.shape(1));
    const sc::Limits limits = make_limits(max_pixels, min_side, max_scans, pass_order);
    const sc::Scale s = make_scale(scale);
    std::vector<sc::Result> results(n);
    {
        nb::gil_scoped_release release;
        sc::decode_resize_batch(ptrs.data(), sizes.data(), n, out.data(), size, limits, s, threads, results.data());
    }
    nb::list result;
    for (const auto& r : results) result.append(status_of(r));
    return result;
}

void py_resize_into(nb::ndarray<const uint8_t, nb::ndim<3>, nb::device::cpu> src, Image out, int pass_order) {
    if (src.shape(2) != 3 || src.stride(2) != 1 || src.stride(1) != 3)
        throw nb::value_error("src must be an HxWx3 uint8 array with contiguous pixels");
    if (out.shape(0) != out.shape(1) || out.shape(0) == 0) throw nb::value_error("out must be a square [size, size, 3] uint8 array");
    const int width = static_cast<int>(src.shape(1)), height = static_cast<int>(src.shape(0));
    if (width == 0 || height == 0) throw nb::value_error("src is empty");
    const int size = static_cast<int>(out.shape(0));
    const sc::PassOrder order = make_order(pass_order);
    const size_t src_stride = static_cast<size_t>(src.stride(0));
    nb::gil_scoped_release release;
    sc::resize_rgb(src.data(), width, height, src_stride, out.data(), static_cast<size_t>(size) * 3, size, order);
}

}  // namespace

NB_MODULE(_native, m) {
    m.doc() = "streetcascade's native image front end (JPEG decode + resize into the engine's input buffer)";
    m.def("decode", &py_decode, "data"_a, "draft_size"_a, "max_pixels"_a, "min_side"_a, "max_scans"_a, "scale"_a, "pass_order"_a,
          "JPEG bytes -> (status, message, HxWx3 uint8 array or None), decoded at the DCT scale draft_size asks for.");
    m.def("decode_resize_into", &py_decode_resize_into, "data"_a, "out"_a, "max_pixels"_a, "min_side"_a, "max_scans"_a, "scale"_a, "pass_order"_a,
          "Decode one JPEG and resize it (Pillow BILINEAR) into out[size, size, 3]; returns (status, message).");
    m.def("decode_resize_batch", &py_decode_resize_batch, "images"_a, "out"_a, "threads"_a, "max_pixels"_a, "min_side"_a,
          "max_scans"_a, "scale"_a, "pass_order"_a,
          "Decode + resize len(images) JPEGs into out[:n] on `threads` threads; one (status, message) per image.");
    m.def("resize_into", &py_resize_into, "src"_a, "out"_a, "pass_order"_a,
          "Pillow-exact BILINEAR resize of an HxWx3 uint8 array into out[size, size, 3].");
    nb::dict info;
    info["jpeg"] = sc::libjpeg_version();
#ifdef STREETCASCADE_WITH_CUDA
    // GPU backends: decode + resize straight into an engine's device input buffer (a raw
    // device pointer, e.g. runtime.cuda.DeviceBuffer.ptr), on the slot's stream.
    nb::class_<sc::gpu::FrontEnd>(m, "GpuFrontEnd")
        .def("__init__", [](sc::gpu::FrontEnd* self, uintptr_t stream) {
            try {
                new (self) sc::gpu::FrontEnd(reinterpret_cast<void*>(stream));
            } catch (const std::exception& exc) {
                throw nb::value_error(exc.what());
            }
        }, "stream"_a)
        .def("decode_resize_into", [](sc::gpu::FrontEnd& fe, nb::bytes data, uintptr_t device_ptr, int size, int64_t max_pixels,
                                      int min_side, int pass_order) {
            sc::Limits limits = make_limits(max_pixels, min_side, 500, pass_order);
            const auto* ptr = static_cast<const uint8_t*>(data.data());
            const size_t n = data.size();
            sc::Result r;
            {
                nb::gil_scoped_release release;
                r = fe.decode_resize(ptr, n, reinterpret_cast<uint8_t*>(device_ptr), static_cast<size_t>(size) * 3, size, limits);
            }
            return status_of(r);
        }, "data"_a, "device_ptr"_a, "size"_a, "max_pixels"_a, "min_side"_a, "pass_order"_a)
        .def("synchronize", [](sc::gpu::FrontEnd& fe) {
            nb::gil_scoped_release release;
            fe.synchronize();
        });
    m.def("gpu_available", []() {
        std::string why;
        bool ok = sc::gpu::available(why);
        return nb::make_tuple(ok, why);
    });
    info["nvjpeg"] = sc::gpu::nvjpeg_version();
#else
    info["nvjpeg"] = "";
#endif
    m.attr("INFO") = info;
}
