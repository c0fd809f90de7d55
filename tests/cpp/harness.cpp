#include "harness.h"

#include <c10/util/Exception.h>
#include <unistd.h>

#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <vector>

namespace torchtl::testing {
namespace {

struct Case {
  std::string name;
  CaseFn fn;
};

// Suite name -> cases in registration (source) order.
std::map<std::string, std::vector<Case>>& registry() {
  static std::map<std::string, std::vector<Case>> suites;
  return suites;
}

std::vector<std::string>& current_failures() {
  static std::vector<std::string> failures;
  return failures;
}

// "…/tests/cpp/test_weights.cpp" -> "weights".
std::string suite_of(const std::string& file) {
  auto base = file.substr(file.find_last_of("/\\") + 1);
  base = base.substr(0, base.find('.'));
  const std::string prefix = "test_";
  return base.rfind(prefix, 0) == 0 ? base.substr(prefix.size()) : base;
}

std::filesystem::path& scratch_dir() {
  static std::filesystem::path dir;
  return dir;
}

}  // namespace

std::string scratch_path(const std::string& name) {
  auto& dir = scratch_dir();
  if (dir.empty()) {
    dir = std::filesystem::temp_directory_path() / ("torchtl_tests_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
  }
  return (dir / name).string();
}

bool register_case(const char* file, const char* name, CaseFn fn) {
  registry()[suite_of(file)].push_back({name, std::move(fn)});
  return true;
}

Failure::Failure(const char* file, int line, const char* expression)
    : where_(std::string(file) + ":" + std::to_string(line) + ": expected " + expression) {}

Failure::~Failure() {
  const auto detail = detail_.str();
  current_failures().push_back(where_ + (detail.empty() ? "" : "\n      " + detail));
}

std::string thrown_message(const std::function<void()>& fn, const char* file, int line, const char* expression) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  }
  Failure(file, line, expression) << "an exception, but none was thrown";
  return "";
}

}  // namespace torchtl::testing

// Usage: torchtl_tests [--list] [SUITE...]   (no suite: run them all)
// Exit status: 0 all passed, 1 a case failed, 77 every case that ran was skipped (ctest's
// SKIP_RETURN_CODE, so a suite whose input is missing shows as skipped rather than passed).
int main(int argc, char** argv) {
  using namespace torchtl::testing;
  std::set<std::string> wanted;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--list") {
      for (const auto& [suite, cases] : registry()) {
        for (const auto& c : cases) std::cout << suite << "." << c.name << "\n";
      }
      return 0;
    }
    if (!registry().count(arg)) {
      std::cerr << "no test suite '" << arg << "'; known:";
      for (const auto& entry : registry()) std::cerr << " " << entry.first;
      std::cerr << "\n";
      return 2;
    }
    wanted.insert(arg);
  }

  int passed = 0, failed = 0, skipped = 0;
  for (const auto& [suite, cases] : registry()) {
    if (!wanted.empty() && !wanted.count(suite)) continue;
    for (const auto& c : cases) {
      current_failures().clear();
      const std::string label = suite + "." + c.name;
      try {
        c.fn();
      } catch (const Skipped& why) {
        ++skipped;
        std::cout << "[ SKIPPED ] " << label << ": " << why.what() << std::endl;
        continue;
      } catch (const c10::Error& e) {
        // The message is what names the fault; libtorch's backtrace would bury it.
        current_failures().push_back(std::string("uncaught c10::Error: ") + e.what_without_backtrace());
      } catch (const std::exception& e) {
        current_failures().push_back(std::string("uncaught exception: ") + e.what());
      } catch (...) {
        current_failures().push_back("uncaught exception of unknown type");
      }
      if (current_failures().empty()) {
        ++passed;
        std::cout << "[ PASSED  ] " << label << std::endl;
      } else {
        ++failed;
        std::cout << "[ FAILED  ] " << label << std::endl;
        for (const auto& f : current_failures()) std::cout << "    " << f << std::endl;
      }
    }
  }
  if (!scratch_dir().empty()) std::filesystem::remove_all(scratch_dir());
  std::cout << passed << " passed, " << failed << " failed, " << skipped << " skipped" << std::endl;
  if (failed) return 1;
  return passed == 0 && skipped > 0 ? 77 : 0;
}
