// main() of the MPI test executables: initialize MPI, run the tests on every rank (output from
// rank 0 only; other ranks print their failures), and fail on every rank if any rank failed.
// A test that fails on one rank ends the whole job at once (MPI_Abort from a GoogleTest
// listener): the other ranks may be waiting in a collective of that test or of the next one, and
// would otherwise hang until ctest's timeout. Collectives also abort after 120 s (a hang).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>

#include "tests/mpi/mpi_env.h"

namespace og_test {
og::DistContext* g_dist = nullptr;
}

namespace {

class AbortJobOnFailure : public ::testing::EmptyTestEventListener {
 public:
  explicit AbortJobOnFailure(int rank) : rank_(rank) {}
  // Ranks other than 0 have no result printer: print their failures here.
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (rank_ == 0 || !r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                 r.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (!info.result()->Failed()) return;
    std::fprintf(stderr, "[rank %d] %s.%s FAILED: aborting the MPI job so that no rank waits in a collective\n", rank_,
                 info.test_suite_name(), info.name());
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  og::DistContext ctx = og::init_distributed(&argc, &argv);
  if (!ctx.mpi) {
    std::fprintf(stderr, "this test must be started with mpirun (-np 2 or more)\n");
    return 1;
  }
  og_test::g_dist = &ctx;
  ctx.host_comm->set_timeout(120.0);  // a rank stuck in a collective ends the job (run_train sets its own)
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (ctx.rank != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new AbortJobOnFailure(ctx.rank));  // after the printer: rank 0's failure is printed first
  int rc = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rc != 0) std::fprintf(stderr, "rank %d: tests failed\n", ctx.rank);
  og::finalize_distributed(ctx);
  return worst;
}
