// Causal attention through cuDNN's fused flash-attention engines, with the backend graph API
// (cudnn_graph.h; the C++ frontend's headers are not available here).
//
// cuDNN's single SDPA operation (backend >= 9.13.1) takes no causal mask before backend 9.21 (the
// GPU image has 9.14, the toolkit here 9.19), so both directions are the composite operation graphs that NVIDIA's cudnn-frontend 1.x builds (its
// SDPANode / SDPABackwardNode, which cuDNN's runtime-fusion engines recognize as flash
// attention), with the same operations, data types and layouts:
//   forward:  S = Q·Kᵀ (fp32) · scale; causal mask: GEN_INDEX rows and columns, row >= col,
//             BINARY_SELECT(S, lowest float); softmax as M = max S, E = exp(S − M), Z = Σ E,
//             stats = M + log Z (our lse), P = E / Z (bf16); O = P·V.
//   backward: Dsum = Σ_d dO ∘ O; S as above; E = exp(S − stats); dV = Eᵀ·dO (E as bf16);
//             dS = (dO·Vᵀ − Dsum) ∘ E · scale; dK = dSᵀ·Q; dQ = dS·K into an fp32 accumulator
//             (zeroed before each call; cuDNN adds into it with atomics), then copied to bf16.
// Tensors are described as [b, h, s, d] over our [B, T, H, hd] memory (strides T·H·hd, hd, H·hd, 1);
// K and V enter the products transposed by swapping their last two dims and strides.
#include "model/cuda/attention_cudnn.h"

#include <fmt/format.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <vector>

#include "core/cuda_utils.h"
#include "core/error.h"

#if ORTHOGPT_CUDNN
#include <cudnn.h>
#endif

namespace og::gpu {

#if ORTHOGPT_CUDNN
namespace {

void cudnn_check(cudnnStatus_t st, const char* what) {
  if (st == CUDNN_STATUS_SUCCESS) return;
  char detail[2048] = {0};
  cudnnGetLastErrorString(detail, sizeof detail);
  fail("cuDNN attention: {} failed: {}{}{}", what, cudnnGetErrorString(st), detail[0] ? ": " : "", detail);
}

// An owned backend descriptor.
class Desc {
 public:
  Desc(cudnnBackendDescriptorType_t type, const char* what) : what_(what) {
    cudnn_check(cudnnBackendCreateDescriptor(type, &d_), what);
  }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;

  template <typename V> Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, const V& v) {
    return set_n(name, type, 1, &v);
  }
  template <typename V>
  Desc& set_n(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t n, const V* v) {
    cudnn_check(cudnnBackendSetAttribute(d_, name, type, n, v), what_);
    return *this;
  }
  Desc& finalize() {
    cudnn_check(cudnnBackendFinalize(d_), what_);
    return *this;
  }
  cudnnBackendDescriptor_t get() const { return d_; }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
  const char* what_;
};

using Dims = std::array<int64_t, 4>;

// Builds one operation graph; every descriptor it made lives as long as the builder (the plan
// keeps the builder).
class GraphBuilder {
 public:
  using Tensor = cudnnBackendDescriptor_t;

  Tensor tensor(int64_t uid, cudnnDataType_t type, Dims dims, Dims strides, bool is_virtual = false,
                bool by_value = false, bool reorder_f16x16 = false) {
    Desc& t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor descriptor");
    const int64_t alignment = 16;
    t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, type)
        .set_n(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data())
        .set_n(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data())
        .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, uid)
        .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, alignment);
    if (is_virtual) t.set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, true);
    if (by_value) t.set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, true);
    if (reorder_f16x16) {
      const cudnnBackendTensorReordering_t mode = CUDNN_TENSOR_REORDERING_F16x16;
      t.set(CUDNN_ATTR_TENSOR_REORDERING_MODE, CUDNN_TYPE_TENSOR_REORDERING_MODE, mode);
    }
    return t.finalize().get();
  }
  // A virtual tensor (uids from 1000 on).
  Tensor virt(cudnnDataType_t type, Dims dims, Dims strides) {
    return tensor(next_virtual_uid_++, type, dims, strides, true);
  }
  // A scalar passed by value (its host address goes into the variant pack).
  Tensor scalar(int64_t uid, cudnnDataType_t type) {
    return tensor(uid, type, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
  }

  // y = mode(x[, b[, t]]); math precision prec; axis for GEN_INDEX.
  void pointwise(cudnnPointwiseMode_t mode, Tensor x, Tensor y, Tensor b = nullptr, Tensor t = nullptr,
                 cudnnDataType_t prec = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    Desc& pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise descriptor");
    pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, mode)
        .set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, prec);
    if (axis >= 0) pw.set(CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, axis);
    pw.finalize();
    const cudnnBackendDescriptor_t pwd = pw.get();
    const float one = 1.0f;
    Desc& op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise operation");
    op.set(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, pwd)
        .set(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, x)
        .set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, one)
        .set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, one);
    if (b) op.set(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, b);
    if (t) op.set(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, t);
    op.set(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, y);
    ops_.push_back(op.finalize().get());
  }
  void matmul(Tensor a, Tensor b, Tensor c) {  // c = a·b over the last two dims (fp32 compute)
    Desc& mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul descriptor");
    mm.set(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, CUDNN_DATA_FLOAT).finalize();
    const cudnnBackendDescriptor_t mmd = mm.get();
    Desc& op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul operation");
    op.set(CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, a)
        .set(CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, b)
        .set(CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, c)
        .set(CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, mmd);
    ops_.push_back(op.finalize().get());
  }
  void reduction(cudnnReduceTensorOp_t mode, Tensor x, Tensor y) {  // over the dims where y is 1
    Desc& rd = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction descriptor");
    rd.set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, mode)
        .set(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, CUDNN_DATA_FLOAT)
        .finalize();
    const cudnnBackendDescriptor_t rdd = rd.get();
    Desc& op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction operation");
    op.set(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, x)
        .set(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, y)
        .set(CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, rdd);
    ops_.push_back(op.finalize().get());
  }
  void reshape(Tensor x, Tensor y) {
    Desc& op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "reshape operation");
    op.set(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, x)
        .set(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, y);
    ops_.push_back(op.finalize().get());
  }

  // The operation graph, then the first engine configuration of the heuristics (mode A, then the
  // fallback list) whose execution plan finalizes. Returns the plan; sets workspace and engine.
  cudnnBackendDescriptor_t finalize(cudnnHandle_t handle, const char* name, int64_t& workspace, std::string& engine) {
    Desc& graph = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    graph.set_n(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, (int64_t)ops_.size(), ops_.data())
        .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, handle)
        .finalize();
    std::string tried;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      Desc& heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "engine heuristics");
      heur.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, graph.get())
          .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, mode)
          .finalize();
      int64_t count = 0;
      cudnn_check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                           &count, nullptr),
                  "engine heuristics (count)");
      std::vector<cudnnBackendDescriptor_t> cfgs;
      for (int64_t i = 0; i < count; ++i)
        cfgs.push_back(make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config").get());
      int64_t got = 0;
      if (count > 0)
        cudnn_check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                             count, &got, cfgs.data()),
                    "engine heuristics (results)");
      for (int64_t i = 0; i < got; ++i) {
        cudnnBackendDescriptor_t plan = nullptr;
        cudnn_check(cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan), "execution plan");
        cudnnStatus_t st =
            cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
        if (st == CUDNN_STATUS_SUCCESS)
          st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                        &cfgs[i]);
        if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(plan);
        if (st == CUDNN_STATUS_SUCCESS) {
          plans_.push_back(plan);
          int64_t n = 0;
          cudnn_check(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                               &workspace),
                      "plan workspace size");
          engine = fmt::format("engine {}", engine_index(cfgs[i]));
          return plan;
        }
        char detail[512] = {0};
        cudnnGetLastErrorString(detail, sizeof detail);
        tried += fmt::format("\n  engine {}: {} {}", engine_index(cfgs[i]), cudnnGetErrorString(st), detail);
        cudnnBackendDestroyDescriptor(plan);
      }
    }
    fail("cuDNN attention: no cuDNN engine supports the {} graph (cuDNN {}){}", name, cudnnGetVersion(),
         tried.empty() ? std::string(": the heuristics returned none") : tried);
  }

  ~GraphBuilder() {
    for (auto p : plans_) cudnnBackendDestroyDescriptor(p);
  }

 private:
  Desc& make(cudnnBackendDescriptorType_t type, const char* what) { return descs_.emplace_back(type, what); }
  static int64_t engine_index(cudnnBackendDescriptor_t cfg) {
    cudnnBackendDescriptor_t eng = nullptr;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng) != CUDNN_STATUS_SUCCESS) return -1;
    int64_t n = 0, index = -1;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &eng) ==
        CUDNN_STATUS_SUCCESS)
      cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index);
    cudnnBackendDestroyDescriptor(eng);
    return index;
  }

  std::deque<Desc> descs_;  // deque: descriptors never move once made
  std::vector<cudnnBackendDescriptor_t> ops_, plans_;
  int64_t next_virtual_uid_ = 1000;
};

// Unique ids of the tensors the caller binds (virtual ones count from 1000).
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kScale, kLowest, kDO, kDQ, kDK, kDV, kOne, kDQAccum };

// [b, h, s, d] over memory [B, T, H, hd]; the "transposed" form swaps the last two dims (Kᵀ, Vᵀ).
Dims bhsd_dims(int64_t B, int64_t T, int64_t H, int64_t D) { return {B, H, T, D}; }
Dims bhsd_strides(int64_t T, int64_t H, int64_t D) { return {T * H * D, D, H * D, 1}; }
Dims transposed(Dims x) { return {x[0], x[1], x[3], x[2]}; }

struct Plan {
  std::unique_ptr<GraphBuilder> graph;
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;
  std::string engine;
};

// The shapes both graphs use, and the tensors they share.
struct AttnGraph {
  Dims x, xs;                  // q, k, v, o, dO, dQ, dK, dV: [b, h, s, d] over [B, T, H, hd]
  Dims ss, ss_strides;         // scores [b, h, s_q, s_kv]
  Dims row, row_strides;       // per-row statistics [b, h, s, 1]
  GraphBuilder::Tensor q, kt;  // Q and Kᵀ
  GraphBuilder::Tensor stats;  // lse
  GraphBuilder::Tensor scale, lowest;

  AttnGraph(GraphBuilder& g, int64_t B, int64_t T, int64_t H, int64_t D)
      : x(bhsd_dims(B, T, H, D)),
        xs(bhsd_strides(T, H, D)),
        ss{B, H, T, T},
        ss_strides{H * T * T, T * T, T, 1},
        row{B, H, T, 1},
        row_strides{H * T, T, 1, 1} {
    q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, x, xs);
    kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, transposed(x), transposed(xs));
    stats = g.tensor(kStats, CUDNN_DATA_FLOAT, row, row_strides);
    scale = g.scalar(kScale, CUDNN_DATA_FLOAT);
    lowest = g.scalar(kLowest, CUDNN_DATA_FLOAT);
  }
  GraphBuilder::Tensor scores(GraphBuilder& g) const { return g.virt(CUDNN_DATA_FLOAT, ss, ss_strides); }
  GraphBuilder::Tensor rows(GraphBuilder& g) const { return g.virt(CUDNN_DATA_FLOAT, row, row_strides); }

  // mask(Q·Kᵀ·scale): the causal mask as select(s, lowest, row >= col).
  GraphBuilder::Tensor masked_scores(GraphBuilder& g) const {
    auto s = scores(g);
    g.matmul(q, kt, s);
    auto s_scaled = scores(g);
    g.pointwise(CUDNN_POINTWISE_MUL, s, s_scaled, scale);
    auto row_index = g.virt(CUDNN_DATA_INT32, ss, ss_strides);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, s_scaled, row_index, nullptr, nullptr, CUDNN_DATA_INT32, 2);
    auto col_index = g.virt(CUDNN_DATA_INT32, ss, ss_strides);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, s_scaled, col_index, nullptr, nullptr, CUDNN_DATA_INT32, 3);
    auto keep = g.virt(CUDNN_DATA_BOOLEAN, ss, ss_strides);
    g.pointwise(CUDNN_POINTWISE_CMP_GE, row_index, keep, col_index, nullptr, CUDNN_DATA_BOOLEAN);
    auto masked = scores(g);
    g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, s_scaled, masked, lowest, keep);
    return masked;
  }
};

// A plan for the graph `body` adds to the shared tensors of AttnGraph.
template <typename Body>
Plan build_plan(cudnnHandle_t handle, const char* name, int64_t B, int64_t T, int64_t H, int64_t D, Body body) {
  Plan p;
  p.graph = std::make_unique<GraphBuilder>();
  const AttnGraph a(*p.graph, B, T, H, D);
  body(*p.graph, a);
  p.plan = p.graph->finalize(handle, name, p.workspace, p.engine);
  return p;
}

void forward_graph(GraphBuilder& g, const AttnGraph& a) {
  const Dims &ss = a.ss, &ss_strides = a.ss_strides;
  auto v = g.tensor(kV, CUDNN_DATA_BFLOAT16, a.x, a.xs);
  auto o = g.tensor(kO, CUDNN_DATA_BFLOAT16, a.x, a.xs);

  auto s_masked = a.masked_scores(g);
  auto m = a.rows(g);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, s_masked, m);
  auto s_minus_m = a.scores(g);
  g.pointwise(CUDNN_POINTWISE_SUB, s_masked, s_minus_m, m);
  auto e = a.scores(g);
  g.pointwise(CUDNN_POINTWISE_EXP, s_minus_m, e);
  auto z = a.rows(g);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, z);
  auto log_z = a.rows(g);
  g.pointwise(CUDNN_POINTWISE_LOG, z, log_z);
  g.pointwise(CUDNN_POINTWISE_ADD, m, a.stats, log_z);
  auto prob = g.virt(CUDNN_DATA_BFLOAT16, ss, ss_strides);  // bf16: the A type of the second product
  g.pointwise(CUDNN_POINTWISE_DIV, e, prob, z);
  g.matmul(prob, v, o);
}

void backward_graph(GraphBuilder& g, const AttnGraph& a) {
  const Dims &x = a.x, &xs = a.xs, &ss = a.ss;
  const int64_t H = x[1], T = x[2], D = x[3];
  const Dims ss_t_strides{H * T * T, T * T, 1, T};  // the transposed [b, h, s_kv, s_q] view
  auto vt = g.tensor(kV, CUDNN_DATA_BFLOAT16, transposed(x), transposed(xs));
  auto o = g.tensor(kO, CUDNN_DATA_BFLOAT16, x, xs);
  auto d_o = g.tensor(kDO, CUDNN_DATA_BFLOAT16, x, xs);
  auto dq = g.tensor(kDQ, CUDNN_DATA_BFLOAT16, x, xs);
  auto dk = g.tensor(kDK, CUDNN_DATA_BFLOAT16, x, xs);
  auto dv = g.tensor(kDV, CUDNN_DATA_BFLOAT16, x, xs);
  auto dq_accum = g.tensor(kDQAccum, CUDNN_DATA_FLOAT, x, {H * T * D, T * D, D, 1}, false, false, true);
  auto one = g.scalar(kOne, CUDNN_DATA_FLOAT);

  // Dsum = Σ_d dO ∘ O
  auto do_o = g.virt(CUDNN_DATA_FLOAT, x, {H * T * D, T * D, H * D, 1});
  g.pointwise(CUDNN_POINTWISE_MUL, d_o, do_o, o);
  auto dsum0 = a.rows(g);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, do_o, dsum0);
  auto dsum = a.rows(g);
  g.pointwise(CUDNN_POINTWISE_MUL, dsum0, dsum, one);
  // E = exp(mask(Q·Kᵀ·scale) − stats)
  auto s_masked = a.masked_scores(g);
  auto s_minus = a.scores(g);
  g.pointwise(CUDNN_POINTWISE_SUB, s_masked, s_minus, a.stats);
  auto e = a.scores(g);
  g.pointwise(CUDNN_POINTWISE_EXP, s_minus, e);
  // dV = Eᵀ·dO
  auto e_t = g.virt(CUDNN_DATA_BFLOAT16, ss, ss_t_strides);
  g.reshape(e, e_t);
  g.matmul(e_t, d_o, dv);
  // dS = (dO·Vᵀ − Dsum) ∘ E · scale
  auto dp = a.scores(g);
  g.matmul(d_o, vt, dp);
  auto dp1 = a.scores(g);
  g.pointwise(CUDNN_POINTWISE_MUL, dp, dp1, one);
  auto dp2 = a.scores(g);
  g.pointwise(CUDNN_POINTWISE_SUB, dp1, dp2, dsum);
  auto ds0 = a.scores(g);
  g.pointwise(CUDNN_POINTWISE_MUL, dp2, ds0, e);
  auto ds = a.scores(g);
  g.pointwise(CUDNN_POINTWISE_MUL, ds0, ds, a.scale);
  // dK = dSᵀ·Q
  auto ds_t = g.virt(CUDNN_DATA_BFLOAT16, ss, ss_t_strides);
  g.reshape(ds, ds_t);
  g.matmul(ds_t, a.q, dk);
  // dQ = dS·K (fp32 accumulator), then to bf16
  auto k = g.virt(CUDNN_DATA_FLOAT, x, xs);
  g.reshape(a.kt, k);
  g.matmul(ds, k, dq_accum);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, dq_accum, dq);
}

}  // namespace

struct CudnnAttention::Impl {
  int T, H, hd;
  float scale, lowest = std::numeric_limits<float>::lowest(), one = 1.0f;
  cudnnHandle_t handle = nullptr;
  struct Plans {
    Plan fwd, bwd;
  };
  std::map<int, Plans> by_batch;
  DeviceBuffer<char> workspace;
  DeviceBuffer<float> dq_accum;

  Plans& plans(int B) {
    auto it = by_batch.find(B);
    if (it != by_batch.end()) return it->second;
    Plans pl{build_plan(handle, "forward", B, T, H, hd, forward_graph),
             build_plan(handle, "backward", B, T, H, hd, backward_graph)};
    const size_t ws = (size_t)std::max(pl.fwd.workspace, pl.bwd.workspace);
    if (ws > workspace.size()) workspace.resize(ws);
    const size_t acc = (size_t)B * T * H * hd;
    if (acc > dq_accum.size()) dq_accum.resize(acc);
    return by_batch.emplace(B, std::move(pl)).first->second;
  }
  void execute(const Plan& p, int n, const int64_t* uids, void* const* ptrs, cudaStream_t stream) {
    cudnn_check(cudnnSetStream(handle, stream), "cudnnSetStream");
    Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
    void* ws = workspace.data();
    pack.set_n(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids)
        .set_n(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs)
        .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, ws)
        .finalize();
    cudnn_check(cudnnBackendExecute(handle, p.plan, pack.get()), "execute");
  }
};

CudnnAttention::CudnnAttention(int B, int T, int H, int hd) : impl_(std::make_unique<Impl>()) {
  OG_CHECK(B > 0 && T > 0 && H > 0 && hd > 0 && hd % 8 == 0 && hd <= 256,
           "cuDNN attention: bad sizes B={} T={} H={} hd={} (hd a multiple of 8, at most 256)", B, T, H, hd);
  Impl& m = *impl_;
  m.T = T;
  m.H = H;
  m.hd = hd;
  m.scale = 1.0f / std::sqrt((float)hd);
  cudnn_check(cudnnCreate(&m.handle), "cudnnCreate");
  m.plans(B);
}

CudnnAttention::~CudnnAttention() {
  if (impl_ && impl_->handle) {
    impl_->by_batch.clear();  // plans before the handle
    cudnnDestroy(impl_->handle);
  }
}

void CudnnAttention::forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B,
                             cudaStream_t stream) {
  Impl& m = *impl_;
  const Plan& p = m.plans(B).fwd;
  const int64_t uids[] = {kQ, kK, kV, kO, kStats, kScale, kLowest};
  void* const ptrs[] = {
      const_cast<bf16*>(q), const_cast<bf16*>(k), const_cast<bf16*>(v), out, lse, &m.scale, &m.lowest};
  m.execute(p, 7, uids, ptrs, stream);
}

void CudnnAttention::backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out, const float* lse,
                              const bf16* q, const bf16* k, const bf16* v, int B, cudaStream_t stream) {
  Impl& m = *impl_;
  const Plan& p = m.plans(B).bwd;
  CUDA_CHECK(cudaMemsetAsync(m.dq_accum.data(), 0, (size_t)B * m.T * m.H * m.hd * sizeof(float), stream));
  const int64_t uids[] = {kQ, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kDQAccum, kScale, kLowest, kOne};
  void* const ptrs[] = {const_cast<bf16*>(q),
                        const_cast<bf16*>(k),
                        const_cast<bf16*>(v),
                        const_cast<bf16*>(out),
                        const_cast<bf16*>(dout),
                        const_cast<float*>(lse),
                        dq,
                        dk,
                        dv,
                        m.dq_accum.data(),
                        &m.scale,
                        &m.lowest,
                        &m.one};
  m.execute(p, 13, uids, ptrs, stream);
}

size_t CudnnAttention::device_bytes() const { return impl_->workspace.bytes() + impl_->dq_accum.bytes(); }

std::string CudnnAttention::describe() const {
  std::string engines;
  for (const auto& [B, pl] : impl_->by_batch)
    engines +=
        fmt::format("{}B={}: forward {}, backward {} (workspace {:.1f} / {:.1f} MiB)", engines.empty() ? "" : "; ", B,
                    pl.fwd.engine, pl.bwd.engine, pl.fwd.workspace / 1048576.0, pl.bwd.workspace / 1048576.0);
  return fmt::format("cuDNN {} (headers {}): {}", cudnnGetVersion(), CUDNN_VERSION, engines);
}

bool CudnnAttention::built_with_cudnn() { return true; }

#else  // no cuDNN in this build

struct CudnnAttention::Impl {};

CudnnAttention::CudnnAttention(int, int, int, int) {
  fail("cuDNN attention: this build has no cuDNN (cmake found no cudnn.h / libcudnn); use the flash kernels");
}
CudnnAttention::~CudnnAttention() = default;
void CudnnAttention::forward(bf16*, float*, const bf16*, const bf16*, const bf16*, int, cudaStream_t) {}
void CudnnAttention::backward(bf16*, bf16*, bf16*, const bf16*, const bf16*, const float*, const bf16*, const bf16*,
                              const bf16*, int, cudaStream_t) {}
size_t CudnnAttention::device_bytes() const { return 0; }
std::string CudnnAttention::describe() const { return "no cuDNN"; }
bool CudnnAttention::built_with_cudnn() { return false; }

#endif

}  // namespace og::gpu
