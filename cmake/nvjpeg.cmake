# The nvJPEG front end (native/nvjpeg_frontend.cu): built when a CUDA toolkit (nvcc) and nvJPEG
# are found. nvJPEG comes with the full toolkit, or from PyPI (`pip install nvidia-nvjpeg`,
# headers + library under nvidia/cu13/): point NVJPEG_ROOT at that folder, or let the
# interpreter building the wheel find it. Sets STREETCASCADE_CUDA_BUILT and target sc_nvjpeg.
include(CheckLanguage)
check_language(CUDA)
set(_sc_why "")
if(NOT CMAKE_CUDA_COMPILER)
  set(_sc_why "no CUDA compiler (nvcc) found")
else()
  find_package(CUDAToolkit QUIET)
  if(NOT CUDAToolkit_FOUND)
    set(_sc_why "CUDA toolkit not found")
  endif()
endif()

if(NOT _sc_why)
  if(NOT NVJPEG_ROOT AND DEFINED Python_EXECUTABLE)
    execute_process(COMMAND "${Python_EXECUTABLE}" -c "import nvidia, os; print(next(p for p in (os.path.join(d, 'cu13') for d in nvidia.__path__) if os.path.isdir(p)))"
                    OUTPUT_VARIABLE _sc_wheel OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(_sc_wheel)
      set(NVJPEG_ROOT "${_sc_wheel}")
    endif()
  endif()
  find_path(NVJPEG_INCLUDE_DIR nvjpeg.h HINTS ${NVJPEG_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS})
  # The PyPI wheel ships only the versioned soname.
  find_library(NVJPEG_LIBRARY NAMES nvjpeg libnvjpeg.so.13 libnvjpeg.so.12 HINTS ${NVJPEG_ROOT}/lib ${CUDAToolkit_LIBRARY_DIR})
  if(NOT NVJPEG_INCLUDE_DIR OR NOT NVJPEG_LIBRARY)
    set(_sc_why "nvJPEG not found (full CUDA toolkit, or pip install nvidia-nvjpeg and -DNVJPEG_ROOT=<site-packages>/nvidia/cu13)")
  endif()
endif()

if(_sc_why)
  if(STREETCASCADE_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "STREETCASCADE_WITH_CUDA=ON: ${_sc_why}")
  endif()
  message(STATUS "streetcascade native: nvJPEG front end not built: ${_sc_why}")
else()
  if(NOT CMAKE_CUDA_ARCHITECTURES)
    # Turing .. Blackwell (CUDA 13 dropped older ones). No "native": the build machine may have no GPU.
    set(CMAKE_CUDA_ARCHITECTURES 75 80 86 89 90 120)
  endif()
  enable_language(CUDA)
  add_library(sc_nvjpeg STATIC native/nvjpeg_frontend.cu)
  target_include_directories(sc_nvjpeg PUBLIC native ${NVJPEG_INCLUDE_DIR})
  target_link_libraries(sc_nvjpeg PUBLIC CUDA::cudart ${NVJPEG_LIBRARY})
  set_target_properties(sc_nvjpeg PROPERTIES CUDA_STANDARD 17 POSITION_INDEPENDENT_CODE ON)
  set(STREETCASCADE_CUDA_BUILT ON)
endif()
