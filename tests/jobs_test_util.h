// Helpers for tests of the jobs and service layers.
#ifndef MERGESERVE_TESTS_JOBS_TEST_UTIL_H_
#define MERGESERVE_TESTS_JOBS_TEST_UTIL_H_

#include <string>

#include "gtest/gtest.h"
#include "mergeserve/auth/principal.h"
#include "mergeserve/jobs/merge_request.h"

namespace mergeserve::testing {

// A merge request of `tenant` from YAML (an unparsable document yields a
// config the planner refuses, with the parse error in the test log).
inline MergeRequest Request(const std::string& yaml,
                            const std::string& tenant = kDefaultTenant) {
  auto config = MergeConfig::FromYaml(yaml, "");
  EXPECT_TRUE(config.ok()) << config.status();
  return {tenant, config.ok() ? *config : MergeConfig{}, {}};
}

}  // namespace mergeserve::testing

#endif  // MERGESERVE_TESTS_JOBS_TEST_UTIL_H_
