#pragma once
// A minimal test harness, so the C++ tests need nothing beyond libtorch and a compiler
// (GoogleTest is not on a fresh machine, and installing it needs root). Cases are grouped by
// source file: tests/cpp/test_weights.cpp holds suite "weights", which ctest runs as
// `torchtl_tests weights`.
//
//   TORCHTL_TEST(loads_what_it_saves) { ... EXPECT(a == b) << "why"; ... }
//
// A failed EXPECT records the failure and the case goes on, so one run reports every broken
// expectation; an exception ends the case and is reported with its message.
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>

namespace torchtl::testing {

using CaseFn = std::function<void()>;

// Registers a case under the suite named by its file; returns nothing useful (runs at static
// initialisation, through TORCHTL_TEST).
bool register_case(const char* file, const char* name, CaseFn fn);

// Collects the streamed detail of one failed expectation and records it when destroyed.
class Failure {
 public:
  Failure(const char* file, int line, const char* expression);
  ~Failure();
  Failure(const Failure&) = delete;
  Failure& operator=(const Failure&) = delete;
  template <typename T>
  Failure& operator<<(const T& value) {
    detail_ << value;
    return *this;
  }

 private:
  std::string where_;
  std::ostringstream detail_;
};

// Thrown by SKIP(): the case cannot run here (a missing optional input), which is not a pass.
struct Skipped : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The message of the exception `fn` throws; fails the case when it throws none.
std::string thrown_message(const std::function<void()>& fn, const char* file, int line, const char* expression);

// A file name inside a directory private to this run, removed when the run ends.
std::string scratch_path(const std::string& name);

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace torchtl::testing

#define TORCHTL_TEST_CONCAT_(a, b) a##b
#define TORCHTL_TEST_CONCAT(a, b) TORCHTL_TEST_CONCAT_(a, b)

#define TORCHTL_TEST(name)                                                                        \
  static void torchtl_test_##name();                                                              \
  static const bool TORCHTL_TEST_CONCAT(torchtl_registered_, name) =                              \
      ::torchtl::testing::register_case(__FILE__, #name, torchtl_test_##name);                    \
  static void torchtl_test_##name()

// `if (ok) {} else Failure(...) << ...` lets the caller stream detail after the macro.
#define EXPECT(condition) \
  if (condition) {        \
  } else                  \
    ::torchtl::testing::Failure(__FILE__, __LINE__, #condition)

// Evaluates to the message of the exception that `statement` throws.
#define THROWN_MESSAGE(statement) \
  ::torchtl::testing::thrown_message([&] { statement; }, __FILE__, __LINE__, #statement)

#define SKIP(why) throw ::torchtl::testing::Skipped(why)
