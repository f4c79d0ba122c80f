// Streams documents out of the input files of `orthogpt tokenize`, in file order, in batches.
//   plain text, split "blank-line": documents are runs of lines separated by blank lines (empty or
//     whitespace-only); a document is its lines joined by '\n' (no trailing newline).
//   plain text, split "file": each file is one document, verbatim.
//   *.jsonl: one JSON object per non-blank line with a string field "text". Lines are handed out
//     unparsed (parsing is left to the tokenizing threads, see document_text()).
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace og {

struct RawDocument {
  std::string text;   // the document, or for a *.jsonl input the raw JSON line
  size_t file = 0;    // index into the reader's input list
  int64_t line = 0;   // 1-based line number where the document starts
  bool json = false;  // text is a JSON line; document_text() extracts the document
};

class DocumentReader {
 public:
  // Checks that `split` is known and every input is a readable regular file (og::Error naming
  // the split value or the file).
  DocumentReader(std::vector<std::string> files, const std::string& split);

  // Append documents to `out` until their text reaches about `max_bytes` (at least one document
  // is appended unless the input is exhausted). Returns false when nothing was left to read.
  bool read(std::vector<RawDocument>& out, size_t max_bytes);

  const std::vector<std::string>& files() const { return files_; }
  uint64_t total_bytes() const { return total_bytes_; }  // sum of the input file sizes

 private:
  bool open_next_file();

  std::vector<std::string> files_;
  bool split_files_ = false;
  uint64_t total_bytes_ = 0;
  size_t next_file_ = 0;  // index of the file after the open one
  std::ifstream in_;
  bool open_ = false;
  bool json_ = false;    // the open file is *.jsonl
  int64_t line_no_ = 0;  // lines read from the open file
};

// The text of a document: raw.text, or the "text" field of a JSON line. A malformed line, a
// non-object, or a missing / non-string "text" is an og::Error naming file and line.
std::string document_text(RawDocument&& raw, const std::string& file);

}  // namespace og
