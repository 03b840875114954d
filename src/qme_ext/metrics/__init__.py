"""The evaluation engine's public API (docs/definitions.rst, §2): Rank-k/CMC, mAP (general, SC, CC),
TAR@FAR, FNIR@FPIR, ROC/DET/EER, verification of genuine/impostor vectors, bootstrap
intervals and paired comparisons, out-of-core and sharded evaluation.

Layer: above ``qme_ext.ops`` (the custom ops), ``qme_ext.io`` and ``qme_ext.fusion``
(a fused file is evaluated out of core); below ``plots``, ``qme``, ``reference`` and
``cli``. Inside, lowest first: ``nonfinite``, ``splits`` (enrolment splits),
``order_stats`` (radix select), ``accumulate`` (the blockwise passes), ``minp``,
``rprecision``,
``orientation`` (distances read as negated similarities), ``bootstrap``, ``core`` (the metric
functions), ``calibration`` (Cllr, minDCF), ``verification``, ``dev_eval`` (dev thresholds on
eval, EPC), ``erc`` (error versus reject), ``streaming`` (score files larger than memory),
``embeddings`` (features scored tile by tile), ``distributed`` (``torch.distributed``
shards), ``evaluator`` (the stateful :class:`Evaluator` of training loops). Each imports only those before it; this file imports them all and defines nothing
(``metrics.erc``, ``metrics.dev_eval`` are the functions; their modules stay importable by
full name).
"""
from .core import (DEFAULT_FARS, MODES, PROTOCOLS, OpenSetResult, RankResult, TarResult,
                   cmc_curve, compare, curve_bands, det, eer, evaluate, fnir_at_fpir,
                   histogram_edges, rank_metrics, roc, roc_far_grid, tar_at_far)
from .dev_eval import dev_eval, epc
from .embeddings import embedding_matrices, evaluate_embeddings
from .erc import erc, erc_pairs
from .evaluator import Evaluator
from .nonfinite import NonFiniteScoreWarning
from .streaming import evaluate_file
from .verification import VerificationResult, verification

__all__ = ["DEFAULT_FARS", "MODES", "PROTOCOLS", "OpenSetResult", "RankResult", "TarResult",
           "cmc_curve", "compare", "curve_bands", "det", "eer", "embedding_matrices", "evaluate",
           "evaluate_embeddings", "evaluate_file",
           "fnir_at_fpir", "histogram_edges", "rank_metrics", "roc", "roc_far_grid",
           "tar_at_far", "NonFiniteScoreWarning", "VerificationResult", "verification",
           "dev_eval", "epc", "erc", "erc_pairs", "Evaluator"]
