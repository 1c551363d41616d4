// mergeserve: the merge engine's command line.
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/analyze_command.h"
#include "cli/eval_command.h"
#include "cli/merge_command.h"
#ifdef MERGESERVE_WITH_SERVICE
#include "cli/serve_command.h"
#include "cli/token_command.h"
#endif

namespace {

constexpr char kUsage[] = R"(usage: mergeserve COMMAND [args]

commands:
  merge CONFIG.yaml OUTPUT_DIR   run one merge in-process (mergekit-yaml
                                 equivalent); see `mergeserve merge --help`
  mergekit-yaml CONFIG OUT [mergekit flags]
                                 the same with mergekit-yaml's command line
  analyze CONFIG.yaml            the TIES paper's diagnostics of a merge
                                 (kept fractions, sign conflicts, norms,
                                 cosines); see `mergeserve analyze --help`
  eval --program P --data D [--weights DIR]
                                 accuracy of a checkpoint's program (with a
                                 merge's weights loaded) on a dataset
  fisher --program P --data D --out DIR
                                 a program's diagonal Fisher on its task
                                 data (exact, sampled or empirical)
  gram --program P --data D --out DIR
                                 RegMean's Gram matrices of every linear
                                 layer's input (found in the program's graph)
  methods                        list the merge methods
  serve [flags]                  run the gRPC service; see `mergeserve serve --help`
  token create|list|revoke --data-dir DIR
                                 administer the service's API tokens

See README.md for the config vocabulary and the methods' options.
)";

}  // namespace

int main(int argc, char** argv) {
  // A file size limit (or a quota that acts like one) must fail the write
  // with EFBIG, reported as a full disk, not kill the process.
  std::signal(SIGXFSZ, SIG_IGN);
  // Selection histograms and chunk buffers (a few MiB each) are allocated
  // per tensor. glibc would hand such blocks back to the kernel on free and
  // fault fresh zero pages in for the next tensor: 150k page faults per
  // 170M-parameter merge, a fifth of its time. Keeping them in the heap
  // makes the next tensor reuse the same pages.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  if (argc < 2 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "--help") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  std::vector<std::string> rest(argv + 2, argv + argc);
  if (cmd == "merge") return mergeserve::RunMergeCommand(rest);
  if (cmd == "methods") return mergeserve::RunMethodsCommand(rest);
  if (cmd == "mergekit-yaml") return mergeserve::RunMergekitYamlCommand(rest);
  if (cmd == "analyze") return mergeserve::RunAnalyzeCommand(rest);
  if (cmd == "eval") return mergeserve::RunEvalCommand(rest);
  if (cmd == "fisher") return mergeserve::RunFisherCommand(rest);
  if (cmd == "gram") return mergeserve::RunGramCommand(rest);
#ifdef MERGESERVE_WITH_SERVICE
  if (cmd == "serve") return mergeserve::RunServeCommand(argc - 1, argv + 1);
  if (cmd == "token") return mergeserve::RunTokenCommand(rest);
#endif
  std::fprintf(stderr, "mergeserve: unknown command '%s'\n\n%s", cmd.c_str(),
               kUsage);
  return 2;
}
