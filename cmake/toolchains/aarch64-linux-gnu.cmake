# Cross-compiling for 64-bit Arm Linux with Debian's g++-aarch64-linux-gnu; tests run under qemu-aarch64 (docs/portability.md).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# The arm64 libraries that Debian lets sit beside the amd64 ones are installed (dpkg --add-architecture arm64). Those it
# does not (libhdf5-dev, and Open MPI, whose libpmix2 needs the non-Multi-Arch libmunge2 that amd64 Open MPI needs too)
# are unpacked by scripts/setup.sh --aarch64 into VAE_AARCH64_DEPS: found there when building, and laid over / for the
# guest by qemu's -L when running.
set(VAE_AARCH64_DEPS "${CMAKE_CURRENT_LIST_DIR}/../../build/deps/aarch64" CACHE PATH "Unpacked arm64 packages that cannot be installed")
get_filename_component(VAE_AARCH64_DEPS "${VAE_AARCH64_DEPS}" ABSOLUTE)
set(VAE_AARCH64_LIBDIR "${VAE_AARCH64_DEPS}/usr/lib/aarch64-linux-gnu")
if(NOT EXISTS "${VAE_AARCH64_LIBDIR}/libmpi.so.40")
  message(FATAL_ERROR "${VAE_AARCH64_DEPS} has no arm64 Open MPI: run scripts/setup.sh --aarch64 first")
endif()
set(CMAKE_FIND_ROOT_PATH "${VAE_AARCH64_DEPS}" /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# libmpi's own dependencies (libopen-pal, libpmix, …) are resolved from the unpacked tree at link time.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-Wl,-rpath-link,${VAE_AARCH64_LIBDIR}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-Wl,-rpath-link,${VAE_AARCH64_LIBDIR}")

# The host's h5cc and mpicxx describe amd64 builds: the arm64 headers and libraries are named directly instead.
set(HDF5_C_COMPILER_EXECUTABLE "" CACHE FILEPATH "no HDF5 wrapper when cross-compiling")
set(HDF5_ROOT "${VAE_AARCH64_LIBDIR}/hdf5/serial")
# pkg-config too would describe the host's Open MPI: it sees the installed arm64 packages only.
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
set(MPI_SKIP_COMPILER_WRAPPER ON)
set(MPI_SKIP_GUESSING ON)
set(MPI_CXX_HEADER_DIR "${VAE_AARCH64_LIBDIR}/openmpi/include" CACHE PATH "")
set(MPI_CXX_ADDITIONAL_INCLUDE_DIRS "${VAE_AARCH64_LIBDIR}/openmpi/include/openmpi" CACHE STRING "")
set(MPI_CXX_LIB_NAMES mpi_cxx mpi CACHE STRING "")
set(MPI_mpi_LIBRARY "${VAE_AARCH64_LIBDIR}/libmpi.so.40" CACHE FILEPATH "")
set(MPI_mpi_cxx_LIBRARY "${VAE_AARCH64_LIBDIR}/libmpi_cxx.so.40" CACHE FILEPATH "")

find_program(VAE_QEMU_AARCH64 qemu-aarch64 REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR "${VAE_QEMU_AARCH64};-L;${VAE_AARCH64_DEPS}")
