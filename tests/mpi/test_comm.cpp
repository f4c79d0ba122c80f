// The MPI communicator: every collective against the values each rank can compute by itself.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "tests/mpi/mpi_env.h"

using og_test::comm;

namespace {
float value(int rank, size_t i) { return 0.5f + (float)rank * 1000.0f + (float)i; }
}  // namespace

TEST(Comm, RankAndSize) {
  EXPECT_GE(comm().size(), 2);
  EXPECT_EQ(comm().backend(), "mpi");
  const double n = comm().all_reduce_scalar(1.0, og::ReduceOp::Sum);
  EXPECT_EQ(n, comm().size());
}

TEST(Comm, AllReduce) {
  const int R = comm().size(), r = comm().rank();
  std::vector<float> a(37), b(37), c(37);
  for (size_t i = 0; i < a.size(); ++i) a[i] = b[i] = c[i] = value(r, i);
  comm().all_reduce(a.data(), a.size(), og::ReduceOp::Sum);
  comm().all_reduce(b.data(), b.size(), og::ReduceOp::Avg);
  comm().all_reduce(c.data(), c.size(), og::DType::F32, og::ReduceOp::Max);
  for (size_t i = 0; i < a.size(); ++i) {
    double sum = 0;
    for (int q = 0; q < R; ++q) sum += value(q, i);
    EXPECT_NEAR(a[i], sum, 1e-3);
    EXPECT_NEAR(b[i], sum / R, 1e-3);
    EXPECT_EQ(c[i], value(R - 1, i));
  }
}

TEST(Comm, ReduceScatterAllGatherAllToAll) {
  const int R = comm().size(), r = comm().rank();
  const size_t n = 5;
  std::vector<float> send(R * n), recv(n);
  for (size_t i = 0; i < send.size(); ++i) send[i] = value(r, i);
  comm().reduce_scatter(send.data(), recv.data(), n, og::DType::F32, og::ReduceOp::Sum);
  for (size_t i = 0; i < n; ++i) {
    double sum = 0;
    for (int q = 0; q < R; ++q) sum += value(q, r * n + i);
    EXPECT_NEAR(recv[i], sum, 1e-3);
  }
  std::vector<float> mine(n), all(R * n);
  for (size_t i = 0; i < n; ++i) mine[i] = value(r, i);
  comm().all_gather(mine.data(), all.data(), n, og::DType::F32);
  for (int q = 0; q < R; ++q)
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(all[q * n + i], value(q, i));
  // in place: send is this rank's block of recv
  std::vector<float> inplace(R * n, -1.0f);
  for (size_t i = 0; i < n; ++i) inplace[r * n + i] = value(r, i);
  comm().all_gather(inplace.data() + r * n, inplace.data(), n, og::DType::F32);
  EXPECT_EQ(inplace, all);
  // all-to-all: block j of rank q's send arrives as block q of rank j's recv
  std::vector<float> a2a_send(R * n), a2a_recv(R * n);
  for (int j = 0; j < R; ++j)
    for (size_t i = 0; i < n; ++i) a2a_send[j * n + i] = value(r, j * 100 + i);
  comm().all_to_all(a2a_send.data(), a2a_recv.data(), n, og::DType::F32);
  for (int q = 0; q < R; ++q)
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(a2a_recv[q * n + i], value(q, r * 100 + i));
}

TEST(Comm, BroadcastAndBarrier) {
  const int R = comm().size(), r = comm().rank();
  for (int root = 0; root < R; ++root) {
    std::vector<double> v(9, (double)r);
    comm().broadcast(v.data(), v.size(), og::DType::F64, root);
    for (double x : v) EXPECT_EQ(x, (double)root);
  }
  comm().barrier();
}
