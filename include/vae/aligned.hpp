// 64-byte aligned storage: the flat parameter buffers and the per-rank arena that holds every working buffer.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstring>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

namespace vae {

inline constexpr std::size_t kAlign = 64;
inline constexpr std::size_t kHugePage = std::size_t(2) << 20;

constexpr std::size_t round_up(std::size_t n, std::size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// An owning, zero-initialised, 64-byte aligned array of trivially copyable T.
template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t n) : size_(n) {
    if (n == 0) return;
    const std::size_t bytes = n * sizeof(T);
    // Large buffers (the memory pool) go on 2 MiB pages where the kernel allows it: the training step sweeps tens of
    // megabytes, and with 4 KiB pages the TLB misses cost more than the arithmetic in the optimizer pass.
    align_ = bytes >= 2 * kHugePage ? kHugePage : kAlign;
    data_ = static_cast<T*>(::operator new(round_up(bytes, align_), std::align_val_t{align_}));
#ifdef MADV_HUGEPAGE
    if (align_ == kHugePage) madvise(static_cast<void*>(data_), round_up(bytes, align_), MADV_HUGEPAGE);
#endif
    std::memset(static_cast<void*>(data_), 0, bytes);
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), align_(std::exchange(o.align_, kAlign)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      align_ = std::exchange(o.align_, kAlign);
    }
    return *this;
  }
  ~AlignedBuffer() { release(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return size_; }
  T& operator[](std::size_t i) { return data_[i]; }
  const T& operator[](std::size_t i) const { return data_[i]; }
  std::span<T> span() { return {data_, size_}; }
  std::span<const T> span() const { return {data_, size_}; }

 private:
  void release() {
    if (data_) ::operator delete(static_cast<void*>(data_), std::align_val_t{align_});
    data_ = nullptr;
  }
  T* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t align_ = kAlign;
};

// A bump allocator over one aligned block. Built twice: first with no memory to measure what the
// buffers need (measure()), then with exactly that many bytes, so the pool size is exact.
class Arena {
 public:
  static Arena measure() { return Arena(); }
  explicit Arena(std::size_t bytes) : storage_(bytes), base_(storage_.data()), capacity_(bytes) {}
  // Carves from memory someone else owns (a slice of a bigger arena).
  static Arena over(std::span<std::byte> memory) {
    Arena a;
    a.base_ = memory.data();
    a.capacity_ = memory.size();
    return a;
  }

  template <class T>
  std::span<T> take(std::size_t n) {
    std::size_t bytes = round_up(n * sizeof(T), kAlign);
    if (base_ && used_ + bytes > capacity_)
      throw std::logic_error("arena overflow: asked for " + std::to_string(bytes) + " bytes with " +
                             std::to_string(capacity_ - used_) + " left");
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += bytes;
    return {p, n};
  }
  std::size_t used() const { return used_; }
  std::size_t capacity() const { return capacity_; }

 private:
  Arena() = default;
  AlignedBuffer<std::byte> storage_;
  std::byte* base_ = nullptr;  // nullptr while measuring
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
};

}  // namespace vae
