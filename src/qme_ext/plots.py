"""PNG figures for ``qme-ext evaluate --plots``: ROC, DET (probit axes), CMC, score histograms.

matplotlib is optional: it is imported lazily with the non-interactive Agg backend, and
:func:`available` lets callers skip plotting when it is missing. Curves come in as
``{row name: arrays}`` so that one figure compares every model and fusion row.
"""
from __future__ import annotations

import re
from statistics import NormalDist
from typing import Optional

import numpy as np

__all__ = ["available", "plot_roc", "plot_det", "plot_cmc", "plot_score_hist",
           "plot_score_hist_counts", "score_histograms", "probit", "safe_name", "hist_plot_name",
           "curves_of_matrix",
           "write_curve_plots", "write_comparison_plots", "save_figure", "curve_plot_names",
           "plot_epc", "plot_erc", "ranked_lists"]

# DET axes span these error rates; rates outside are clipped so that probit stays finite
_DET_MIN, _DET_MAX = 1e-5, 0.5
_PROBIT = np.vectorize(NormalDist().inv_cdf, otypes=[np.float64])


def available() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def safe_name(row: str) -> str:
    """A file-name-safe version of a row name ("zscore:max" -> "zscore_max")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", row).strip("_") or "row"


def _finish(fig, ax, title: str, path, grid=None) -> None:
    """Title, grid lines (``which`` = grid; None: none), legend, then write and close."""
    ax.set_title(title)
    if grid is not None:
        ax.grid(True, which=grid, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path) -> None:
    """Write ``fig`` as a PNG to ``path`` atomically (rendered in memory, then
    :func:`qme_ext.io.write_atomic`: a failing disk leaves an old ``path`` intact) and close it."""
    import io

    from .io import write_atomic
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        _pyplot().close(fig)
    write_atomic(path, buf.getvalue())


def plot_roc(curves: dict, path, bands: Optional[dict] = None) -> None:
    """ROC: ``curves[row] = (far (T,), tar (T,))`` fractions; log-scaled FAR axis.
    ``bands[row] = (far (F,), lo (F,), hi (F,))``: a pointwise interval drawn shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row, (far, tar) in curves.items():
        far = np.asarray(far, dtype=np.float64)
        keep = far > 0  # log axis
        line, = ax.plot(far[keep], np.asarray(tar)[keep], label=row)
        if bands and row in bands:
            bf, lo, hi = (np.asarray(x, dtype=np.float64) for x in bands[row])
            ax.fill_between(bf, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("False accept rate")
    ax.set_ylabel("True accept rate")
    _finish(fig, ax, "ROC", path, grid="both")


def probit(rates) -> np.ndarray:
    """Phi^-1 of error rates clipped to [1e-5, 0.5] (the DET axis coordinate)."""
    return _PROBIT(np.clip(np.asarray(rates, dtype=np.float64), _DET_MIN, _DET_MAX))


def plot_det(curves: dict, path, bands: Optional[dict] = None) -> None:
    """DET on probit axes: ``curves[row] = (far (T,), frr (T,))`` fractions;
    ``bands[row] = (far, TAR lo, TAR hi)`` (those of :func:`plot_roc`) drawn shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for row, (far, frr) in curves.items():
        line, = ax.plot(probit(far), probit(frr), label=row)
        if bands and row in bands:
            bf, lo, hi = (np.asarray(x, dtype=np.float64) for x in bands[row])
            ax.fill_between(probit(bf), probit(1.0 - hi), probit(1.0 - lo),
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ticks = np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5])
    pos = probit(ticks)
    labels = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(pos, labels)
    ax.set_yticks(pos, labels)
    lim = probit([_DET_MIN, _DET_MAX])
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("False accept rate (%)")
    ax.set_ylabel("False reject rate (%)")
    _finish(fig, ax, "DET", path, grid="major")


def plot_cmc(curves: dict, path, ci: Optional[dict] = None) -> None:
    """CMC: ``curves[row] = cmc (R,)`` fractions, rank 1..R; ``ci[row]`` (R, 2) intervals
    drawn as error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row, cmc in curves.items():
        cmc = np.asarray(cmc, dtype=np.float64)
        ranks = np.arange(1, cmc.size + 1)
        if ci and row in ci:
            lo, hi = np.asarray(ci[row], dtype=np.float64).T
            err = 100 * np.stack([np.maximum(cmc - lo, 0), np.maximum(hi - cmc, 0)])
            ax.errorbar(ranks, 100 * cmc, yerr=err, marker=".", capsize=2, label=row)
        else:
            ax.plot(ranks, 100 * cmc, marker=".", label=row)
    ax.set_xlabel("Rank")
    ax.set_ylabel("Identification rate (%)")
    _finish(fig, ax, "CMC", path, grid="major")


def score_histograms(genuine, impostor, bins: int = 60) -> tuple:
    """(edges (bins + 1,), genuine counts, impostor counts) of the finite scores on shared
    linear bins, as :func:`qme_ext.metrics.histogram_edges` places them."""
    from .metrics.core import histogram_edges
    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.asarray(impostor, dtype=np.float64)
    genuine, impostor = genuine[np.isfinite(genuine)], impostor[np.isfinite(impostor)]
    both = np.concatenate([genuine, impostor])
    edges = histogram_edges(both.min() if both.size else np.inf,
                            both.max() if both.size else -np.inf, bins)
    return edges, np.histogram(genuine, edges)[0], np.histogram(impostor, edges)[0]


def plot_score_hist(genuine, impostor, title: str, path, bins: int = 60) -> None:
    """Genuine vs impostor score densities on shared bins (``np.histogram``, any size input)."""
    plot_score_hist_counts(*score_histograms(genuine, impostor, bins), title, path)


def plot_score_hist_counts(edges, genuine_counts, impostor_counts, title: str, path) -> None:
    """Genuine vs impostor densities from counts on shared ``edges`` (out-of-core input)."""
    plt = _pyplot()
    edges = np.asarray(edges, dtype=np.float64)
    widths = np.diff(edges)
    fig, ax = plt.subplots(figsize=(6, 4))
    for counts, label in ((impostor_counts, "impostor"), (genuine_counts, "genuine")):
        counts = np.asarray(counts, dtype=np.float64)
        n = int(counts.sum())
        if n:
            density = counts / (n * np.where(widths > 0, widths, 1.0))
            ax.stairs(density, edges, fill=True, alpha=0.5, label=f"{label} (n={n})")
    ax.set_xlabel("Score")
    ax.set_ylabel("Density")
    _finish(fig, ax, title, path)


def curves_of_matrix(mat, ids, bins: int = 60, boot: Optional[dict] = None) -> dict:
    """Plot curves of a loaded (P, G) score matrix: ``roc`` = (far, tar) and ``det`` =
    (far, frr) at every distinct score, ``cmc`` to rank 20, ``hist`` = (edges, genuine
    counts, impostor counts). ``ids``: anything with q_pids, g_pids, q_camids, g_camids.
    ``boot`` (``ci``, ``n_boot``, ``boot_seed``, ``boot_unit`` of
    :func:`qme_ext.metrics.curve_bands`) adds ``roc_band`` and ``cmc_ci``.
    (Out of core: :func:`qme_ext.streaming.curves_file`, same keys.)"""
    from .metrics.core import cmc_curve, curve_bands, roc
    far, tar, _ = roc(mat, ids.q_pids, ids.g_pids)
    mat = np.asarray(mat)
    genuine = np.asarray(ids.q_pids)[:, None] == np.asarray(ids.g_pids)[None, :]
    # with bootstrap bands, the CMC comes from their ranking pass (one pass, not two)
    bands = curve_bands(mat, ids.q_pids, ids.g_pids, ids.q_camids, ids.g_camids,
                        **boot) if boot else {}
    cmc = bands["cmc"] if boot else cmc_curve(mat, ids.q_pids, ids.g_pids, ids.q_camids,
                                              ids.g_camids, max_rank=20)
    return {"roc": (far, tar), "det": (far, 1.0 - tar), "cmc": cmc,
            "hist": score_histograms(mat[genuine], mat[~genuine], bins), **bands}


def hist_plot_name(row: str) -> str:
    """The file name of ``row``'s score histogram (score_hist_<row>.png)."""
    return f"score_hist_{safe_name(row)}.png"


def curve_plot_names(rows, hist_rows=None) -> list:
    """The file names :func:`write_curve_plots` writes for ``rows`` (and ``hist_rows``,
    default: all rows), so that callers can check them before anything is drawn."""
    return ["roc.png", "det.png", "cmc.png"] + [
        hist_plot_name(row) for row in (rows if hist_rows is None else hist_rows)]


def write_curve_plots(out_dir, curves: dict, hist_rows=None) -> list:
    """roc.png, det.png, cmc.png comparing every row of ``curves`` ({row: the dict of
    :func:`curves_of_matrix`}), and score_hist_<row>.png for ``hist_rows`` (default: all).
    Returns the file names written."""
    import os
    os.makedirs(out_dir, exist_ok=True)
    written = []
    bands = {row: c["roc_band"] for row, c in curves.items() if "roc_band" in c}
    cmc_ci = {row: c["cmc_ci"] for row, c in curves.items() if "cmc_ci" in c}
    for name, plot, key, extra in (("roc.png", plot_roc, "roc", bands),
                                   ("det.png", plot_det, "det", bands),
                                   ("cmc.png", plot_cmc, "cmc", cmc_ci)):
        plot({row: c[key] for row, c in curves.items()}, os.path.join(out_dir, name),
             extra or None)
        written.append(name)
    for row in (curves if hist_rows is None else hist_rows):
        name = hist_plot_name(row)
        plot_score_hist_counts(*curves[row]["hist"], f"{row}: score distributions",
                               os.path.join(out_dir, name))
        written.append(name)
    return written


def write_comparison_plots(out_dir, mats: dict, ids, hist_rows=None,
                           boot: Optional[dict] = None) -> list:
    """ROC, DET and CMC of every row in one figure each, plus genuine/impostor histograms.

    ``mats[row]`` is a (P, G) score matrix; ``ids`` anything with ``q_pids``, ``g_pids``,
    ``q_camids``, ``g_camids`` (a :class:`qme_ext.io.ScoreSet`); ``hist_rows`` the rows that
    get a ``score_hist_<row>.png`` (default: all); ``boot`` the bootstrap options of
    :func:`curves_of_matrix` (bands and error bars). Returns the file names written.
    """
    return write_curve_plots(out_dir, {row: curves_of_matrix(mat, ids, boot=boot)
                                       for row, mat in mats.items()}, hist_rows)


def plot_epc(alpha, hter, path, label: str = "eval") -> None:
    """EPC (bob.measure): eval HTER (A,) fractions against alpha (A,), the weight of FMR in
    the dev threshold's criterion alpha FMR + (1 - alpha) FNMR."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(np.asarray(alpha, dtype=np.float64), 100 * np.asarray(hter, dtype=np.float64),
            label=label)
    ax.set_xlabel("alpha (weight of FMR on dev)")
    ax.set_ylabel("HTER on eval (%)")
    _finish(fig, ax, "Expected performance curve", path, grid="major")


def plot_erc(curves: dict, path, title: str = "Error versus reject") -> None:
    """ERC: ``curves[quality name] = (rejected fraction (R,), FNMR (R,))`` fractions, one
    line per quality measure (:func:`qme_ext.metrics.erc.erc`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (rej, fnmr) in curves.items():
        ax.plot(100 * np.asarray(rej, dtype=np.float64), 100 * np.asarray(fnmr, dtype=np.float64),
                label=name)
    ax.set_xlabel("Rejected lowest-quality pairs (%)")
    ax.set_ylabel("FNMR (%)")
    _finish(fig, ax, title, path, grid="major")


# ---- ranked lists: the top-k gallery of the worst and best probes --------------------------
RANKED_BY = ("ap", "rank")


def _select_probes(ap: np.ndarray, first_pos: np.ndarray, n: int, by: str) -> list:
    """[(group, probe)]: the n worst valid probes (worst first), then the n best (best
    first), by AP (ties: first-hit rank) or by first-hit rank (ties: AP); equal keys go
    to the lower probe index."""
    valid = np.flatnonzero(first_pos >= 0)
    a, f = ap[valid], first_pos[valid]
    keys = ((-f, a), (f, -a)) if by == "ap" else ((a, -f), (-a, f))
    worst, best = (valid[np.lexsort((valid, *k))[:n]] for k in keys)
    return [("worst", int(p)) for p in worst] + [("best", int(p)) for p in best]


def ranked_lists(scores, q_pids, g_pids, q_camids=None, g_camids=None, n: int = 5, k: int = 10,
                 by: str = "ap", csv_path=None, png_path=None, probe_images=None,
                 gallery_images=None, title: str = "") -> list:
    """The top-k gallery entries of the n worst and the n best probes, genuine marked.

    Parameters
    ----------
    scores : (P, G) similarities (numpy or torch).
    q_pids, g_pids : (P,), (G,) subject ids; q_camids, g_camids : (P,), (G,) camera ids
        or None. As in Rank-k/mAP (general mode), a same-subject entry from the probe's
        own camera is junk: left out of the list, so list positions are the positions
        that AP and the first-hit rank count.
    n : probes per group; k : gallery entries per probe (top-k by :func:`qme_ext.topk`).
    by : "ap" (probes ranked by average precision) or "rank" (by first-hit rank).
        Probes without a genuine entry are never chosen; with fewer than 2n valid
        probes the groups overlap.
    csv_path : where to write the CSV (one line per list entry: group, order, probe,
        probe_pid, ap, first_hit_rank, rank, gallery, gallery_pid, score, genuine).
    png_path : where to write the grid: one row per probe, the probe then its k
        entries, genuine framed green, impostors red. ``probe_images`` /
        ``gallery_images`` (sequences of image paths by index, None or "" for none)
        put the pictures in the cells; otherwise the cells show index, subject and
        score. Needs matplotlib. Both files are written to a temporary and renamed.

    Returns
    -------
    [dict(group, order, probe, probe_pid, ap, first_hit_rank, gallery (k,) int64,
    gallery_pid (k,), score (k,) float64, genuine (k,) bool)] in the CSV's order
    (first_hit_rank is 1-based; a list is shorter than k when junk leaves fewer
    entries).
    """
    from .metrics.core import rank_metrics
    from .ops.inputs import as_count
    from .top_k import topk
    if by not in RANKED_BY:
        raise ValueError(f"by: expected one of {RANKED_BY}, got {by!r}")
    n, k = as_count(n, "n"), as_count(k, "k")
    if hasattr(scores, "detach"):  # a tensor: bfloat16 has no numpy twin, float32 holds it
        t = scores.detach().cpu()
        scores = (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()
    scores = np.asarray(scores)
    res = rank_metrics(scores, q_pids, g_pids, q_camids, g_camids, max_rank=1, per_probe=True)
    qp, gp = np.asarray(q_pids).astype(np.int64), np.asarray(g_pids).astype(np.int64)
    chosen = _select_probes(res.ap, res.first_pos, n, by)
    if not chosen:
        raise ValueError("ranked_lists: no probe has a genuine gallery entry")
    rows = np.array([p for _, p in chosen])
    same = qp[rows, None] == gp[None, :]
    junk = same & ((np.asarray(q_camids)[rows, None] == np.asarray(g_camids)[None, :])
                   if q_camids is not None else False)
    G = scores.shape[1]
    kk = min(G, k + int(junk.sum(axis=1).max()))
    _, idx = topk(np.ascontiguousarray(scores[rows]), kk)
    out, counts = [], {}
    for r, (group, p) in enumerate(chosen):
        keep = idx[r][~junk[r, idx[r]]][:k]
        counts[group] = counts.get(group, 0) + 1
        out.append(dict(group=group, order=counts[group], probe=p, probe_pid=int(qp[p]),
                        ap=float(res.ap[p]), first_hit_rank=int(res.first_pos[p]) + 1,
                        gallery=keep, gallery_pid=gp[keep],
                        score=scores[p, keep].astype(np.float64), genuine=gp[keep] == qp[p]))
    if csv_path is not None:
        _write_ranked_csv(csv_path, out)
    if png_path is not None:
        _plot_ranked(png_path, out, k, probe_images, gallery_images, title)
    return out


def _write_ranked_csv(path, lists: list) -> None:
    import csv
    from .io import atomic_output
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["group", "order", "probe", "probe_pid", "ap", "first_hit_rank", "rank",
                    "gallery", "gallery_pid", "score", "genuine"])
        for d in lists:
            for j, g in enumerate(d["gallery"]):
                w.writerow([d["group"], d["order"], d["probe"], d["probe_pid"],
                            f"{d['ap']:.6g}", d["first_hit_rank"], j + 1, int(g),
                            int(d["gallery_pid"][j]), repr(float(d["score"][j])),
                            int(d["genuine"][j])])


def _image_cell(ax, path) -> bool:
    """Draw the image at `path` into `ax`; False when there is none."""
    if not path:
        return False
    import matplotlib.image as mpimg
    ax.imshow(mpimg.imread(path))
    return True


def _plot_ranked(path, lists: list, k: int, probe_images, gallery_images, title: str) -> None:
    plt = _pyplot()
    rows = len(lists)
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.3 * (k + 1), 1.5 * rows), squeeze=False)
    for r, d in enumerate(lists):
        ax = axes[r, 0]
        img = probe_images[d["probe"]] if probe_images is not None else None
        if not _image_cell(ax, img):
            ax.text(0.5, 0.5, f"probe {d['probe']}\npid {d['probe_pid']}", ha="center",
                    va="center", fontsize=7)
        ax.set_title(f"{d['group']} {d['order']}\nAP {d['ap']:.2f}, hit@{d['first_hit_rank']}",
                     fontsize=7)
        for j in range(k):
            ax = axes[r, j + 1]
            if j < len(d["gallery"]):
                g, ok = int(d["gallery"][j]), bool(d["genuine"][j])
                color = "tab:green" if ok else "tab:red"
                img = gallery_images[g] if gallery_images is not None else None
                if not _image_cell(ax, img):
                    ax.set_facecolor("#e6f4e6" if ok else "#fbe6e6")
                    ax.text(0.5, 0.5, f"g{g}\npid {int(d['gallery_pid'][j])}", ha="center",
                            va="center", fontsize=7)
                ax.set_title(f"{j + 1}: {float(d['score'][j]):.3f}", fontsize=7, color=color)
                for side in ax.spines.values():
                    side.set_edgecolor(color)
                    side.set_linewidth(3)
            else:
                ax.set_axis_off()
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
