#include "cli.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "mergeserve/base/byte_size.h"

namespace mergectl {

int ExitCode(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::OK:
      return 0;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      return 2;
    case grpc::StatusCode::NOT_FOUND:
      return 3;
    case grpc::StatusCode::DATA_LOSS:
      return 4;
    case grpc::StatusCode::ALREADY_EXISTS:
      return 5;
    case grpc::StatusCode::PERMISSION_DENIED:
      return 6;
    case grpc::StatusCode::FAILED_PRECONDITION:
      return 7;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return 8;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 9;
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::ABORTED:
      return 10;
    default:
      return 1;
  }
}

int Fail(const grpc::Status& s, const std::string& server) {
  std::string msg = s.error_message();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    msg = "cannot reach mergeserve at " + server + " (" + msg + ")";
  }
  std::fprintf(stderr, "mergectl: %s\n", msg.c_str());
  return ExitCode(s);
}

std::string HumanBytes(int64_t b) { return mergeserve::FormatBytes(b); }

int ReadConfigArg(const Args& args, const char* verb, std::string* yaml) {
  if (args.positional.size() != 2) {
    std::fprintf(stderr, "mergectl %s: expected CONFIG.yaml\n", verb);
    return 2;
  }
  std::ifstream in(args.positional[1]);
  if (!in) {
    std::fprintf(stderr, "mergectl: cannot read %s\n",
                 args.positional[1].c_str());
    return 3;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  *yaml = ss.str();
  return 0;
}

bool Interactive() { return isatty(2) != 0; }

}  // namespace mergectl
