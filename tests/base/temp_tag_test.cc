#include "mergeserve/base/temp_tag.h"

#include <string>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

// Orphan cleanup matches temporaries by this tag: it must be a plain name
// character sequence between '@'s, whatever the replica id (a pod name, a
// host:port) contains.
TEST(TempTagTest, ReplicaIdsBecomeSafeTags) {
  EXPECT_EQ(TempTagFor("replica-a"), "@replica-a@");
  EXPECT_EQ(TempTagFor("mergeserve-0.ms.default_1"),
            "@mergeserve-0.ms.default_1@");
  EXPECT_EQ(TempTagFor("host:8080"), "@host_8080@");
  EXPECT_EQ(TempTagFor("a/../b c@d"), "@a_.._b_c_d@");
  EXPECT_EQ(TempTagFor(""), "");
}

TEST(TempTagTest, TheProcessTagIsSetOnceAndReadBack) {
  EXPECT_EQ(TempTag(), "");  // a one-shot command has none
  SetTempTag("pod/7");
  EXPECT_EQ(TempTag(), "@pod_7@");
  EXPECT_EQ(TempTag(), TempTagFor("pod/7"));
  SetTempTag("");  // back to none for the other tests in this binary
  EXPECT_EQ(TempTag(), "");
}

}  // namespace
}  // namespace mergeserve
