// An independent, plain fp64 implementation of the orthonormalizations of OPTIMIZERS.md
// (NS5 and Polar Express), written straight from the formulas with naive loops, for tests.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace og::test {

// Row-major (m x n) double matrices.
inline std::vector<double> matmul(const std::vector<double>& a, const std::vector<double>& b, int64_t m, int64_t k,
                                  int64_t n) {
  std::vector<double> c(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p)
      for (int64_t j = 0; j < n; ++j) c[i * n + j] += a[i * k + p] * b[p * n + j];
  return c;
}
inline std::vector<double> transpose(const std::vector<double>& a, int64_t m, int64_t n) {
  std::vector<double> t(m * n);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) t[j * m + i] = a[i * n + j];
  return t;
}

// NS(G) for G (rows x cols). polar: Polar Express (norm·1.02, right form for tall), else NS5
// (transpose tall inputs).
inline std::vector<double> ns_double(std::vector<double> x, int64_t rows, int64_t cols, bool polar, double eps) {
  static const double ns5[5][3] = {{4.0848, -6.8946, 2.9270},
                                   {3.9505, -6.3029, 2.6377},
                                   {3.7418, -5.5913, 2.3037},
                                   {2.8769, -3.1427, 1.2046},
                                   {2.8366, -3.0525, 1.2012}};
  static const double pe[5][3] = {{8.156554524902461, -22.48329292557795, 15.878769915207462},
                                  {4.042929935166739, -2.808917465908714, 0.5000178451051316},
                                  {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
                                  {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
                                  {2.3465413258596377, -1.7097828382687081, 0.42323551169305323}};
  const bool tr = !polar && rows > cols;
  int64_t m = rows, n = cols;
  if (tr) {
    x = transpose(x, rows, cols);
    std::swap(m, n);
  }
  double norm = 0.0;
  for (double v : x) norm += v * v;
  norm = std::sqrt(norm);
  for (double& v : x) v /= (polar ? 1.02 * norm : norm) + eps;
  for (int s = 0; s < 5; ++s) {
    const double a = polar ? pe[s][0] : ns5[s][0], b = polar ? pe[s][1] : ns5[s][1], c = polar ? pe[s][2] : ns5[s][2];
    const bool left = m <= n;
    const int64_t side = left ? m : n;
    const std::vector<double> xt = transpose(x, m, n);
    const std::vector<double> A = left ? matmul(x, xt, m, n, m) : matmul(xt, x, n, m, n);
    const std::vector<double> AA = matmul(A, A, side, side, side);
    std::vector<double> B(side * side);
    for (size_t i = 0; i < B.size(); ++i) B[i] = b * A[i] + c * AA[i];
    const std::vector<double> P = left ? matmul(B, x, m, m, n) : matmul(x, B, m, n, n);
    for (size_t i = 0; i < x.size(); ++i) x[i] = a * x[i] + P[i];
  }
  return tr ? transpose(x, m, n) : x;
}

}  // namespace og::test
