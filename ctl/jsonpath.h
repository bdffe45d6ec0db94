// A JSONPath template evaluator for `emuctl -o jsonpath=TEMPLATE`: the
// subset of kubectl's JSONPath templates that fits emud's JSON, over the
// same JSON `-o json` prints.
//
//   text            copied; \n, \t and \\ are a newline, a tab, a backslash
//   {.a.b}          a field; {.a['b']} the same; {.} or {@} the current node,
//                   {$} the root
//   {.list[2]}      an element (negative indices count from the end)
//   {.list[*].x}    every element's field (results are joined by a space);
//                   {.obj.*} every value of an object
//   {range .list[*]}...{end}
//                   the body once per element, with paths relative to it
//   {"text"}        a quoted literal (with the same escapes)
//
// As in kubectl, a field that is absent prints nothing. Strings print bare;
// numbers, booleans, objects and arrays print as compact JSON. Recursive
// descent (..), filters ([?()]) and slices ([a:b]) are refused as
// unsupported.
#ifndef EMUD_CTL_JSONPATH_H_
#define EMUD_CTL_JSONPATH_H_

#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace emud::ctl {

class JsonPathTemplate {
 public:
  // Parses a template; the error names the offset and what to fix.
  static absl::StatusOr<JsonPathTemplate> Parse(absl::string_view text);
  // The text of the template evaluated over `root`.
  std::string Execute(const nlohmann::json& root) const;

  struct Step {
    enum Kind { kField, kIndex, kWildcard } kind;
    std::string field;
    long index = 0;
  };
  struct Path {
    bool from_root = false;  // $: the root; otherwise the current node
    std::vector<Step> steps;
  };
  struct Node {
    enum Kind { kText, kPath, kRange } kind;
    std::string text;           // kText
    Path path;                  // kPath, kRange
    std::vector<Node> body;     // kRange
  };

 private:
  std::vector<Node> nodes_;
};

}  // namespace emud::ctl

#endif  // EMUD_CTL_JSONPATH_H_
