#include "cli/cli_args.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/exit_codes.h"

namespace mergeserve {

absl::StatusOr<CliArgs> ParseCliArgs(const std::vector<std::string>& in,
                                     const std::map<std::string, bool>& known) {
  CliArgs a;
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string& s = in[i];
    if (s == "-h" || s == "--help") {
      a.help = true;
      continue;
    }
    if (s.rfind("--", 0) != 0 || s.size() == 2) {
      a.positional.push_back(s);
      continue;
    }
    std::string name = s.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto it = known.find(name);
    if (it == known.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option --", name));
    }
    const bool takes_value = it->second;
    if (takes_value && !inline_value) {
      if (i + 1 >= in.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("option --", name, " needs a value"));
      }
      value = in[++i];
    } else if (!takes_value) {
      if (inline_value && value != "true" && value != "false") {
        return absl::InvalidArgumentError(
            absl::StrCat("option --", name, " takes no value"));
      }
      if (!inline_value) value = "true";
    }
    a.flags[name] = value;
  }
  return a;
}

int FailWith(const absl::Status& s) {
  std::fprintf(stderr, "mergeserve: error: %s\n",
               std::string(s.message()).c_str());
  return ExitCodeFor(s.code());
}

}  // namespace mergeserve
