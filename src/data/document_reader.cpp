// Document streaming for `orthogpt tokenize` (see document_reader.h).
#include "data/document_reader.h"

#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace og {

namespace {

bool is_blank(const std::string& line) { return line.find_first_not_of(" \t\r\v\f") == std::string::npos; }

bool ends_with_jsonl(const std::string& path) {
  return path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
}

}  // namespace

DocumentReader::DocumentReader(std::vector<std::string> files, const std::string& split) : files_(std::move(files)) {
  if (split == "file")
    split_files_ = true;
  else if (split != "blank-line")
    fail("tokenize: unknown split \"{}\" (expected \"blank-line\" or \"file\")", split);
  if (files_.empty()) fail("tokenize: no input files");
  for (const std::string& f : files_) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(f, ec)) fail("tokenize: input {} is not a readable file", f);
    total_bytes_ += std::filesystem::file_size(f, ec);
  }
}

bool DocumentReader::open_next_file() {
  if (next_file_ >= files_.size()) return false;
  const std::string& path = files_[next_file_++];
  in_ = std::ifstream(path, std::ios::binary);
  if (!in_) fail("tokenize: cannot open input file {}", path);
  open_ = true;
  json_ = ends_with_jsonl(path);
  line_no_ = 0;
  return true;
}

bool DocumentReader::read(std::vector<RawDocument>& out, size_t max_bytes) {
  size_t bytes = 0;
  bool any = false;
  std::string line;
  while (bytes < max_bytes || !any) {
    if (!open_ && !open_next_file()) break;
    const size_t file = next_file_ - 1;
    RawDocument doc;
    doc.file = file;
    bool have_doc = false;
    if (json_) {  // one record per non-blank line
      while (std::getline(in_, line)) {
        ++line_no_;
        if (is_blank(line)) continue;
        doc.text = std::move(line);
        doc.line = line_no_;
        doc.json = true;
        have_doc = true;
        break;
      }
    } else if (split_files_) {  // the whole file
      std::ostringstream ss;
      ss << in_.rdbuf();
      doc.text = ss.str();
      doc.line = 1;
      have_doc = !doc.text.empty();
      in_.setstate(std::ios::eofbit);
    } else {  // lines up to the next blank line
      while (std::getline(in_, line)) {
        ++line_no_;
        if (is_blank(line)) {
          if (have_doc) break;
          continue;
        }
        if (have_doc) {
          doc.text += '\n';
        } else {
          doc.line = line_no_;
          have_doc = true;
        }
        doc.text += line;
      }
    }
    if (in_.bad()) fail("tokenize: error reading {}", files_[file]);
    if (!have_doc) {  // this file is exhausted
      in_.close();
      open_ = false;
      continue;
    }
    bytes += doc.text.size();
    out.push_back(std::move(doc));
    any = true;
  }
  return any;
}

std::string document_text(RawDocument&& raw, const std::string& file) {
  if (!raw.json) return std::move(raw.text);
  nlohmann::json record;
  try {
    record = nlohmann::json::parse(raw.text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}:{}: invalid JSON: {}", file, raw.line, e.what());
  }
  if (!record.is_object()) fail("{}:{}: expected a JSON object with a string field \"text\"", file, raw.line);
  auto it = record.find("text");
  if (it == record.end() || !it->is_string())
    fail("{}:{}: the JSON object has no string field \"text\"", file, raw.line);
  return std::move(it->get_ref<std::string&>());
}

}  // namespace og
