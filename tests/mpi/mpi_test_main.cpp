// main() of the MPI test executables: initialize MPI, run the tests on every rank (output from
// rank 0 only; other ranks print failures), and fail on every rank if any rank failed.
#include <gtest/gtest.h>
#include <mpi.h>

#include "tests/mpi/mpi_env.h"

namespace og_test {
og::DistContext* g_dist = nullptr;
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  og::DistContext ctx = og::init_distributed(&argc, &argv);
  if (!ctx.mpi) {
    std::fprintf(stderr, "this test must be started with mpirun (-np 2 or more)\n");
    return 1;
  }
  og_test::g_dist = &ctx;
  if (ctx.rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rc != 0) std::fprintf(stderr, "rank %d: tests failed\n", ctx.rank);
  og::finalize_distributed(ctx);
  return worst;
}
