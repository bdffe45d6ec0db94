#include "ctl/jsonpath.h"

#include <cctype>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace emud::ctl {
namespace {

using Node = JsonPathTemplate::Node;
using Path = JsonPathTemplate::Path;
using Step = JsonPathTemplate::Step;

absl::Status Error(size_t offset, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("jsonpath template, offset ", offset, ": ", what));
}

// Appends the character after a backslash at s[i] (i at the backslash);
// returns false if it is not an escape we know.
bool Unescape(absl::string_view s, size_t& i, std::string* out) {
  if (i + 1 >= s.size()) return false;
  switch (s[i + 1]) {
    case 'n': *out += '\n'; break;
    case 't': *out += '\t'; break;
    case 'r': *out += '\r'; break;
    case '\\': *out += '\\'; break;
    case '"': *out += '"'; break;
    case '\'': *out += '\''; break;
    case '{': *out += '{'; break;
    case '}': *out += '}'; break;
    default: return false;
  }
  i += 2;
  return true;
}

bool IsNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '/';
}

// Parses the path in expr (the text between the braces, trimmed), which
// starts at template offset `base`.
absl::StatusOr<Path> ParsePath(absl::string_view expr, size_t base) {
  Path p;
  size_t i = 0;
  if (i < expr.size() && (expr[i] == '$' || expr[i] == '@')) {
    p.from_root = expr[i] == '$';
    ++i;
  } else if (i >= expr.size() || (expr[i] != '.' && expr[i] != '[')) {
    return Error(base, absl::StrCat("'", expr,
                                    "' is not a path: start it with '.' (e.g. {.spec.mac}), "
                                    "or quote literal text as {\"text\"}"));
  }
  if (expr == ".") return p;
  while (i < expr.size()) {
    const size_t at = base + i;
    if (expr[i] == '.') {
      ++i;
      if (i < expr.size() && expr[i] == '.') {
        return Error(at, "recursive descent '..' is not supported; name each field");
      }
      if (i < expr.size() && expr[i] == '*') {
        p.steps.push_back({Step::kWildcard, "", 0});
        ++i;
        continue;
      }
      size_t start = i;
      while (i < expr.size() && IsNameChar(expr[i])) ++i;
      if (i == start) {
        return Error(at, i < expr.size()
                             ? absl::StrCat("expected a field name after '.', got '", expr.substr(i, 1), "'")
                             : std::string("expected a field name after the final '.'"));
      }
      p.steps.push_back({Step::kField, std::string(expr.substr(start, i - start)), 0});
    } else if (expr[i] == '[') {
      size_t close = absl::string_view::npos;
      if (i + 1 < expr.size() && (expr[i + 1] == '\'' || expr[i + 1] == '"')) {
        const char q = expr[i + 1];
        size_t end = expr.find(q, i + 2);
        if (end == absl::string_view::npos || end + 1 >= expr.size() || expr[end + 1] != ']') {
          return Error(at, absl::StrCat("unterminated ", std::string(1, q), "name", std::string(1, q),
                                        "]: close it like ['name']"));
        }
        p.steps.push_back({Step::kField, std::string(expr.substr(i + 2, end - i - 2)), 0});
        i = end + 2;
        continue;
      }
      close = expr.find(']', i);
      if (close == absl::string_view::npos) return Error(at, "'[' without a closing ']'");
      absl::string_view inner = expr.substr(i + 1, close - i - 1);
      if (inner == "*") {
        p.steps.push_back({Step::kWildcard, "", 0});
      } else if (!inner.empty() && inner[0] == '?') {
        return Error(at, "filters [?(...)] are not supported");
      } else if (inner.find(':') != absl::string_view::npos ||
                 inner.find(',') != absl::string_view::npos) {
        return Error(at, absl::StrCat("[", inner, "]: slices and unions are not supported; use [N] or [*]"));
      } else {
        std::string n(inner);
        char* end = nullptr;
        long v = n.empty() ? 0 : std::strtol(n.c_str(), &end, 10);
        if (n.empty() || end == nullptr || *end != '\0') {
          return Error(at, absl::StrCat("[", inner, "] is not an index: use [N], [*] or ['name']"));
        }
        p.steps.push_back({Step::kIndex, "", v});
      }
      i = close + 1;
    } else {
      return Error(at, absl::StrCat("unexpected '", expr.substr(i, 1),
                                    "' in a path: separate fields with '.'"));
    }
  }
  return p;
}

// Parses nodes from text[pos] up to the end or a {end} (when in_range).
absl::Status ParseNodes(absl::string_view t, size_t& pos, bool in_range, size_t range_at,
                        std::vector<Node>* out) {
  std::string text;
  auto flush = [&] {
    if (!text.empty()) out->push_back({Node::kText, std::move(text), {}, {}});
    text.clear();
  };
  while (pos < t.size()) {
    char c = t[pos];
    if (c == '\\') {
      if (!Unescape(t, pos, &text)) {
        text += c;
        ++pos;
      }
      continue;
    }
    if (c != '{') {
      text += c;
      ++pos;
      continue;
    }
    // An action: find its closing brace (outside quotes).
    const size_t open = pos;
    size_t i = pos + 1;
    char quote = 0;
    for (; i < t.size(); ++i) {
      if (quote) {
        if (t[i] == '\\') ++i;
        else if (t[i] == quote) quote = 0;
      } else if (t[i] == '"' || t[i] == '\'') {
        quote = t[i];
      } else if (t[i] == '}') {
        break;
      } else if (t[i] == '{') {
        return Error(i, "'{' inside an action: close the previous one with '}' first");
      }
    }
    if (i >= t.size()) {
      return Error(open, quote ? "unterminated quoted text in an action"
                               : "'{' without a closing '}'");
    }
    absl::string_view body = t.substr(open + 1, i - open - 1);
    size_t lead = 0;
    while (lead < body.size() && body[lead] == ' ') ++lead;
    body.remove_prefix(lead);
    while (!body.empty() && body.back() == ' ') body.remove_suffix(1);
    const size_t body_at = open + 1 + lead;
    pos = i + 1;
    flush();
    if (body.empty()) return Error(open, "empty action {}: put a path in it, e.g. {.name}");
    if (body == "end") {
      if (!in_range) return Error(open, "{end} without a {range ...} to close");
      return absl::OkStatus();
    }
    if (body.front() == '"' || body.front() == '\'') {
      if (body.size() < 2 || body.back() != body.front()) {
        return Error(body_at, "a quoted literal must be the whole action, e.g. {\"\\n\"}");
      }
      std::string lit;
      absl::string_view inner = body.substr(1, body.size() - 2);
      for (size_t k = 0; k < inner.size();) {
        if (inner[k] == '\\') {
          if (!Unescape(inner, k, &lit)) {
            return Error(body_at + 1 + k, absl::StrCat("unknown escape '\\",
                                                       inner.substr(k + 1, 1), "'"));
          }
        } else {
          lit += inner[k++];
        }
      }
      out->push_back({Node::kText, std::move(lit), {}, {}});
      continue;
    }
    if (body.substr(0, 5) == "range" && (body.size() == 5 || body[5] == ' ')) {
      absl::string_view expr = body.substr(5);
      size_t sp = 0;
      while (sp < expr.size() && expr[sp] == ' ') ++sp;
      expr.remove_prefix(sp);
      if (expr.empty()) return Error(open, "{range} needs a path, e.g. {range .devices[*]}");
      auto path = ParsePath(expr, body_at + 5 + sp);
      if (!path.ok()) return path.status();
      Node n{Node::kRange, "", std::move(*path), {}};
      // Returns OK only at its {end}.
      absl::Status s = ParseNodes(t, pos, true, open, &n.body);
      if (!s.ok()) return s;
      out->push_back(std::move(n));
      continue;
    }
    auto path = ParsePath(body, body_at);
    if (!path.ok()) return path.status();
    out->push_back({Node::kPath, "", std::move(*path), {}});
  }
  flush();
  if (in_range) return Error(range_at, "{range ...} without a closing {end}");
  return absl::OkStatus();
}

void Eval(const Path& p, const nlohmann::json& root, const nlohmann::json& cur,
          std::vector<const nlohmann::json*>* out) {
  std::vector<const nlohmann::json*> now = {p.from_root ? &root : &cur}, next;
  for (const Step& s : p.steps) {
    next.clear();
    for (const nlohmann::json* j : now) {
      switch (s.kind) {
        case Step::kField:
          if (j->is_object()) {
            auto it = j->find(s.field);
            if (it != j->end()) next.push_back(&*it);
          }
          break;
        case Step::kIndex:
          if (j->is_array()) {
            long n = static_cast<long>(j->size());
            long k = s.index < 0 ? n + s.index : s.index;
            if (k >= 0 && k < n) next.push_back(&(*j)[static_cast<size_t>(k)]);
          }
          break;
        case Step::kWildcard:
          if (j->is_array() || j->is_object()) {
            for (const auto& e : *j) next.push_back(&e);
          }
          break;
      }
    }
    now.swap(next);
  }
  out->insert(out->end(), now.begin(), now.end());
}

std::string Print(const nlohmann::json& j) {
  if (j.is_string()) return j.get<std::string>();
  return j.dump();
}

void Run(const std::vector<Node>& nodes, const nlohmann::json& root, const nlohmann::json& cur,
         std::string* out) {
  for (const Node& n : nodes) {
    switch (n.kind) {
      case Node::kText:
        *out += n.text;
        break;
      case Node::kPath: {
        std::vector<const nlohmann::json*> r;
        Eval(n.path, root, cur, &r);
        for (size_t i = 0; i < r.size(); ++i) {
          if (i > 0) *out += ' ';
          *out += Print(*r[i]);
        }
        break;
      }
      case Node::kRange: {
        std::vector<const nlohmann::json*> r;
        Eval(n.path, root, cur, &r);
        // {range .list} (without [*]) walks the list's elements too.
        if (r.size() == 1 && r[0]->is_array()) {
          const nlohmann::json* list = r[0];
          r.clear();
          for (const auto& e : *list) r.push_back(&e);
        }
        for (const nlohmann::json* e : r) Run(n.body, root, *e, out);
        break;
      }
    }
  }
}

}  // namespace

absl::StatusOr<JsonPathTemplate> JsonPathTemplate::Parse(absl::string_view text) {
  JsonPathTemplate t;
  size_t pos = 0;
  absl::Status s = ParseNodes(text, pos, false, 0, &t.nodes_);
  if (!s.ok()) return s;
  if (t.nodes_.empty()) return absl::InvalidArgumentError("jsonpath template is empty: give one, e.g. jsonpath='{.name}'");
  return t;
}

std::string JsonPathTemplate::Execute(const nlohmann::json& root) const {
  std::string out;
  Run(nodes_, root, root, &out);
  return out;
}

}  // namespace emud::ctl
