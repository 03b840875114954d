"""What every ``qme-ext`` subcommand shares: the program name, the user-error type,
progress lines, device checks and the fixed-width metrics table (the refusal to write
over an input: :mod:`qme_ext.cli.files`)."""
from __future__ import annotations

import math
import sys

PROG = "qme-ext"


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


def progress(args, message: str) -> None:
    """One progress line on stderr unless ``args.quiet``."""
    if not getattr(args, "quiet", False):
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def check_seed_option(seed, option: str = "--seed") -> int:
    """``seed`` if numpy takes it (an integer in [0, 2**32 - 1]), else :class:`UserError`
    naming ``option``."""
    from ..ops.inputs import check_seed
    try:
        return check_seed(seed, option)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def check_device(name: str) -> str:
    """``name`` if it is a usable torch device, else :class:`UserError`."""
    if name == "cpu":  # spares the torch import when nothing runs on a device
        return name
    import torch
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"invalid --device {name!r}") from None
    if dev.type == "cuda":
        from ..ops import backend as _backend
        if not torch.cuda.is_available():
            raise UserError("--device cuda requested but CUDA is not available")
        if not _backend.cuda_compiled():
            raise UserError("--device cuda: " + _backend.CUDA_BUILD_HINT)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                            "GPU(s)")
    elif dev.type != "cpu":
        raise UserError(f"--device {name}: expected cpu or cuda[:N]")
    return name


def json_value(v):
    """A metric value for JSON: a finite float, or None (JSON has no NaN); a dict of such
    values (or of integer counts) value by value."""
    if isinstance(v, dict):
        return {k: json_value(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):  # an interval (lo, hi)
        return [json_value(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    v = float(v)
    return v if math.isfinite(v) else None


def _percent(value, std=None) -> str:
    if value is None or not math.isfinite(value):
        return "nan"
    text = f"{100 * value:.2f}"
    if std is not None:
        text += "±" + (f"{100 * std:.2f}" if math.isfinite(std) else "nan")
    return text


def _interval(ci) -> str:
    """`` [lo, hi]`` in percent of a bootstrap interval (lo, hi)."""
    return " [" + ", ".join(_percent(x) for x in ci) + "]"


def format_table(results: dict, columns) -> str:
    """Fixed-width text table, one line per row, values in percent.

    ``results[row]`` is a metrics dict; ``columns`` holds ``(header, key, std_key or None)``
    or ``(header, key, None, "plain")`` for a value that is not a rate (printed as is, 4
    decimals: Cllr in bits, a normalised cost); a missing key prints as ``nan``; a key with
    a bootstrap interval ``<key>_ci`` prints as ``88.60 [86.10, 90.90]``.
    """
    headers = ["Row"] + [c[0] for c in columns]
    body = []
    for row, res in results.items():
        cells = [row]
        for col in columns:
            key, std_key = col[1], col[2]
            if col[3:] == ("plain",):
                v = res.get(key, float("nan"))
                cells.append(f"{v:.4f}" if v is not None and math.isfinite(v) else "nan")
                continue
            text = _percent(res.get(key, float("nan")),
                            res.get(std_key, float("nan")) if std_key else None)
            if key + "_ci" in res:
                text += _interval(res[key + "_ci"])
            cells.append(text)
        body.append(cells)
    return _aligned(headers, body)


def format_comparison(title: str, comparison: dict, columns, n_boot: int) -> str:
    """A paired comparison (:func:`qme_ext.metrics.compare`) of the table's metrics, one
    line per metric: difference and its interval in points, two-sided bootstrap p-value
    (``<1/n_boot`` when no replicate crossed zero: the resolution of `n_boot` replicates)."""
    def p_text(p):
        if not math.isfinite(p):
            return "nan"
        return f"<{1 / n_boot:.2g}" if p == 0 else f"{p:.4f}"

    body = []
    for header, key, *_ in columns:
        if key in comparison:
            c = comparison[key]
            diff = c["diff"]
            body.append([header, f"{100 * diff:+.2f}" if math.isfinite(diff) else "nan",
                         _interval(c["ci"]).strip(),
                         p_text(c["p_value"])])
    return title + "\n" + _aligned(["Metric", "Difference", "Interval", "p"], body)


def _aligned(headers, body) -> str:
    widths = [max(len(r[i]) for r in [headers] + body) for i in range(len(headers))]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)]
                     + [line(c) for c in body])
