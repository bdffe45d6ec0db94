#include "ctl/jsonpath.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/match.h"

namespace emud::ctl {
namespace {

const nlohmann::json kDoc = nlohmann::json::parse(R"({
  "devices": [
    {"name": "a", "spec": {"mac": "02:00:00:00:00:0a", "queuePairs": 1},
     "status": {"phase": "PHASE_LINK_UP", "workerPid": 41}},
    {"name": "b", "spec": {"mac": "02:00:00:00:00:0b", "queuePairs": 4},
     "status": {"phase": "PHASE_FAILED", "workerPid": 0, "ok": false}}
  ],
  "map": {"x": 1, "y": "two"}
})");

std::string Eval(const std::string& t) {
  auto p = JsonPathTemplate::Parse(t);
  EXPECT_TRUE(p.ok()) << t << ": " << p.status();
  return p.ok() ? p->Execute(kDoc) : "<error>";
}

std::string ParseError(const std::string& t) {
  auto p = JsonPathTemplate::Parse(t);
  EXPECT_FALSE(p.ok()) << t;
  return p.ok() ? "" : std::string(p.status().message());
}

TEST(JsonPathTest, Fields) {
  EXPECT_EQ(Eval("{.devices[0].name}"), "a");
  EXPECT_EQ(Eval("{.devices[0].spec.mac}"), "02:00:00:00:00:0a");
  EXPECT_EQ(Eval("{.devices[1].spec.queuePairs}"), "4");
  EXPECT_EQ(Eval("{.devices[1].status.ok}"), "false");
  EXPECT_EQ(Eval("{.map['y']}"), "two");
  EXPECT_EQ(Eval("{$.map.x}"), "1");
  EXPECT_EQ(Eval("{.map}"), R"({"x":1,"y":"two"})");
}

TEST(JsonPathTest, IndicesAndWildcards) {
  EXPECT_EQ(Eval("{.devices[-1].name}"), "b");
  EXPECT_EQ(Eval("{.devices[*].name}"), "a b");
  EXPECT_EQ(Eval("{.devices[*].status.workerPid}"), "41 0");
  EXPECT_EQ(Eval("{.map.*}"), "1 two");
  EXPECT_EQ(Eval("{.devices[7].name}"), "");
}

TEST(JsonPathTest, AbsentFieldsPrintNothing) {
  EXPECT_EQ(Eval("[{.nope}] [{.devices[0].nope.deeper}] [{.map.x.y}]"), "[] [] []");
}

TEST(JsonPathTest, RangeWithLiteralTextAndEscapes) {
  EXPECT_EQ(Eval("{range .devices[*]}{.name}\\t{.status.phase}\\n{end}"),
            "a\tPHASE_LINK_UP\nb\tPHASE_FAILED\n");
  EXPECT_EQ(Eval("{range .devices}{.name}{\",\"}{end}"), "a,b,");
  EXPECT_EQ(Eval("names: {range .devices[*]}[{@.name}]{end} done"), "names: [a][b] done");
  // Nested ranges; $ still names the root inside a range.
  EXPECT_EQ(Eval("{range .devices[*]}{.name}:{range .spec.*}{@} {end}{$.map.x};{end}"),
            "a:02:00:00:00:00:0a 1 1;b:02:00:00:00:00:0b 4 1;");
  EXPECT_EQ(Eval("{\"\\n\"}"), "\n");
  EXPECT_EQ(Eval("a\\\\b"), "a\\b");
}

TEST(JsonPathTest, ErrorsSayWhereAndWhat) {
  EXPECT_TRUE(absl::StrContains(ParseError("{.name"), "offset 0: '{' without a closing '}'"));
  EXPECT_TRUE(absl::StrContains(ParseError("x{}"), "offset 1: empty action {}"));
  EXPECT_TRUE(absl::StrContains(ParseError("{range .devices[*]}{.name}"),
                                "offset 0: {range ...} without a closing {end}"));
  EXPECT_TRUE(absl::StrContains(ParseError("{.name}{end}"), "{end} without a {range ...}"));
  EXPECT_TRUE(absl::StrContains(ParseError("{range}{end}"), "{range} needs a path"));
  EXPECT_TRUE(absl::StrContains(ParseError("{name}"), "'name' is not a path: start it with '.'"));
  EXPECT_TRUE(absl::StrContains(ParseError("{.a.}"), "expected a field name after the final '.'"));
  EXPECT_TRUE(absl::StrContains(ParseError("{..name}"), "recursive descent"));
  EXPECT_TRUE(absl::StrContains(ParseError("{.a[?(@.x)]}"), "filters"));
  EXPECT_TRUE(absl::StrContains(ParseError("{.a[0:2]}"), "slices"));
  EXPECT_TRUE(absl::StrContains(ParseError("{.a[x]}"), "[x] is not an index"));
  EXPECT_TRUE(absl::StrContains(ParseError("{.a[0}"), "'[' without a closing ']'"));
  EXPECT_TRUE(absl::StrContains(ParseError("{.a['b}"), "unterminated"));
  EXPECT_TRUE(absl::StrContains(ParseError("{.a{.b}}"), "'{' inside an action"));
  EXPECT_TRUE(absl::StrContains(ParseError("{\"abc}"), "unterminated quoted text"));
  EXPECT_TRUE(absl::StrContains(ParseError("{\"a\\q\"}"), "unknown escape '\\q'"));
  EXPECT_TRUE(absl::StrContains(ParseError("{.a b}"), "unexpected ' '"));
  EXPECT_TRUE(absl::StrContains(ParseError(""), "empty"));
}

}  // namespace
}  // namespace emud::ctl
