#include "dist/bootstrap.h"

#include <mpi.h>

#include <cstdlib>

#include "core/error.h"

namespace og {
bool launched_by_mpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK") ||
         std::getenv("MPI_LOCALNRANKS");
}

DistContext init_distributed(int* argc, char*** argv) {
  DistContext ctx;
  if (!launched_by_mpi()) {
    ctx.host_comm = make_self_communicator();
    return ctx;
  }
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
    fail("MPI_Init_thread failed (launched by mpirun, but MPI could not start)");
  ctx.mpi = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &ctx.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ctx.world);
  // Errors come back as return codes, so they become og::Errors naming the call.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, ctx.rank, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &ctx.local_rank);
  MPI_Comm_size(local, &ctx.local_world);
  MPI_Comm_free(&local);
  ctx.host_comm = make_mpi_communicator();
  return ctx;
}

void finalize_distributed(DistContext& ctx) {
  if (!ctx.mpi) return;
  ctx.host_comm.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
  ctx.mpi = false;
}

void abort_distributed(const DistContext& ctx, int code) {
  if (ctx.mpi) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace og
