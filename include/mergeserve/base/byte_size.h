// Human-readable byte sizes for flags: "512MiB", "2GB", "1.5G", "4096".
#ifndef MERGESERVE_BASE_BYTE_SIZE_H_
#define MERGESERVE_BASE_BYTE_SIZE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mergeserve {

// Decimal (K, M, G, T, KB, ...) and binary (KiB, MiB, ...) suffixes.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view text);
std::string FormatBytes(int64_t bytes);

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_BYTE_SIZE_H_
