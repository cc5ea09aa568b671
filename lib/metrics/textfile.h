// The metrics as a file for node_exporter's textfile collector.
#pragma once

#include <string>
#include <string_view>

#include "common/error.h"

namespace corral {

/// The temporary name write_textfile() uses for `path`: in the same directory (so the
/// rename is atomic), hidden, and not ending in ".prom" (node_exporter reads every
/// *.prom it finds): "DIR/.NAME.PID.tmp".
std::string textfile_temp_path(const std::string& path, int pid);

/// Replaces `path` with `content` atomically: writes a new temporary file created with
/// O_CREAT|O_EXCL|O_NOFOLLOW (never through a link, never into someone else's file; a
/// leftover temporary file of the same name is unlinked first), then renames it over
/// `path`. On failure the temporary file is removed and `path` is left as it was.
/// Writes to a regular file only (no fsync): it does not wait on the disk.
Status write_textfile(const std::string& path, std::string_view content) noexcept;

}  // namespace corral
