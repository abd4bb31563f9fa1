// Text that fm prints comes from peers and tasks: any bytes. These make it safe to put
// in JSON or on a terminal.
#pragma once

#include <string>
#include <string_view>

namespace fm {

// `text` with every byte that is not part of a well-formed UTF-8 sequence (overlong,
// surrogate, truncated, beyond U+10FFFF) replaced by U+FFFD.
std::string ValidUtf8(std::string_view text);

// For a terminal: ValidUtf8, then every control character (C0, DEL, C1) written as an
// escape (\n, \t, \r, \e, \xNN, \u{NN}), so task output or a worker name can never move
// the cursor, change colours or retitle the window.
std::string Printable(std::string_view text);

// The length of the longest prefix of `text` that does not end inside a UTF-8 sequence
// (what a reader of a stream can pass on now; the rest waits for the next read).
size_t CompleteUtf8Prefix(std::string_view text);

}  // namespace fm
