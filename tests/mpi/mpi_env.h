// Access to the distributed context of an MPI test executable (set up in mpi_test_main.cpp).
#pragma once
#include "dist/bootstrap.h"

namespace og_test {
extern og::DistContext* g_dist;
inline og::Communicator& comm() { return *g_dist->host_comm; }
}  // namespace og_test
