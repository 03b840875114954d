// Argument blocks of every qme_ext op and the CPU entry points. The CUDA twins
// (same argument blocks plus a device workspace and a stream) are in ops_cuda.h.
// Conventions: pointers are raw, sizes are int64, strides are in elements;
// every output buffer is allocated by the caller.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qme/common.h"

namespace qme {

// ---- rank_counts: CMC / AP positions, several protocols in one pass --------
// For each probe p and mode m the "good" and "junk" gallery entries are the
// candidates cand_index[cand_offsets[p] : cand_offsets[p+1]] whose flag has
// bit 2m (good) or bit 2m+1 (junk) set; every other column is an impostor.
// Order: descending key, ties by lower gallery index. p_i = number of non-junk
// entries ranked before good entry i.
struct RankCountsArgs {
  // inputs
  MatrixView scores;             // (P, G)
  const int64_t* cand_offsets;   // (P + 1,) CSR offsets into cand_index / cand_flags
  const int64_t* cand_index;     // (nnz,) gallery columns sharing the probe's pid
  const uint8_t* cand_flags;     // (nnz,) bit 2m: good in mode m; bit 2m+1: junk in mode m
  int32_t num_modes;             // 1..3
  int64_t max_candidates;        // max over probes of the candidate count (host-known sizing hint)
  // outputs
  int64_t* first_pos;            // (num_modes, P) p_1, or -1 when the probe has no good entry
  double* ap;                    // (num_modes, P) (1/n) sum_i i / (p_i + 1); 0 when n = 0
  int64_t* num_good;             // (num_modes, P) n
  int64_t* last_pos;             // (num_modes, P) p_n (position of the last good entry), -1 when n = 0
  // R-precision / MAP@R (Musgrave et al. 2020) with R = n: the goods at positions p_i < n
  int64_t* r_hits;               // (num_modes, P) #{i : p_i < n}; R-precision = r_hits / n
  double* map_r;                 // (num_modes, P) (1/n) sum_{i : p_i < n} i / (p_i + 1); 0 when n = 0
};
// Checks shared by both twins and the CUDA workspace query (throws InvalidArgument):
// the view, num_modes, max_candidates >= 0, and for 32-bit keys G <= 2^32 (the
// column lives in the low 32 bits of the 64-bit rank code).
void check_rank_counts_args(const RankCountsArgs& args);
void rank_counts_cpu(const RankCountsArgs& args, int num_threads);

// ---- key_histogram: one radix digit of the order-preserving score keys -----
// Histogram f counts the entries whose key satisfies
//   (key >> prefix_shift) == prefixes[f]   (all entries when num_prefixes == 0)
// in bin (key >> digit_shift) & (2^digit_bits - 1). NaN entries take nan_key.
struct KeyHistogramArgs {
  // inputs
  MatrixView scores;             // (P, G)
  int32_t digit_shift;           // low bit of the digit
  int32_t digit_bits;            // 1..16
  int32_t num_prefixes;          // F; 0 = no prefix filter, one histogram
  const uint64_t* prefixes;      // (F,) key prefixes (ignored when F == 0)
  int32_t prefix_shift;          // digit_shift + digit_bits
  uint64_t nan_key;              // key given to NaN scores
  // outputs
  int64_t* hist;                 // (max(F, 1), 2^digit_bits)
  int64_t* nan_count;            // (1,) number of NaN scores
  uint64_t* min_key;             // (1,) smallest key of a non-NaN score (~0 if none)
  uint64_t* max_key;             // (1,) largest key of a non-NaN score (0 if none)
};
void key_histogram_cpu(const KeyHistogramArgs& args, int num_threads);

// ---- openset_stats: per split, per probe, the open-set order statistics -----
struct OpensetStatsArgs {
  // inputs
  MatrixView scores;             // (P, S) merge scores, one column per gallery subject
  const int64_t* genuine_col;    // (P,) the probe's own subject column, -1 if absent
  const uint8_t* enrolled;       // (n_splits, S) 1 where the subject is enrolled
  int32_t num_splits;
  // outputs
  double* max_other;             // (n_splits, P) max over enrolled columns != genuine_col
                                 //   in key order (NaN lowest); -inf when there is none
  int64_t* num_ge;               // (n_splits, P) enrolled columns != genuine_col whose key
                                 //   is >= the genuine key; 0 when genuine_col < 0
  int64_t* nonfinite;            // (3,) NaN, +inf, -inf entries of the whole matrix (every
                                 //   column); added to, so the caller zeroes it
};
void openset_stats_cpu(const OpensetStatsArgs& args, int num_threads);

// Validation shared by the CPU and CUDA entry points (throws InvalidArgument).
void check_matrix(const MatrixView& m, const char* name);

}  // namespace qme
