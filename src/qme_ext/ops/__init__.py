"""The custom ops ``qme_ext::<op>``: the only code that calls the compiled modules
``qme_ext._C`` (CPU) and ``qme_ext._C_cuda`` (CUDA).

Layer: the lowest (it imports nothing of qme_ext but ``_version``). ``backend`` loads the
modules and reports the build; ``keys`` holds the order-preserving integer keys of
scores; ``inputs`` validates user arrays at the boundary; ``common`` the plumbing every
op wrapper shares; then one file per op family, each a ``torch.library.custom_op``
wrapper with ``register_fake`` (and ``register_autograd`` where differentiable):
``evaluation`` (rank_counts, key_histogram, openset_stats), ``fusion`` (fuse_scores,
score_stats), ``qme`` (expert_fuse), ``quality`` (qmagface_epilogue,
template_aggregate), ``shard`` (count_before), ``topk``, ``rerank`` (rerank_jaccard).
"""
