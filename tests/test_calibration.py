"""Cllr, minCllr, minDCF/actDCF on verification results, thresholds fixed on dev and
applied to eval (HTER), the EPC and ``qme-ext verify --dev --eval`` (issue 22), against
bob.measure's and kaldi's documented definitions on small hand-derived cases."""
import json
import math

import numpy as np
import pytest

from qme_ext import cli
from qme_ext.metrics import verification
from qme_ext.metrics.calibration import pav
from qme_ext.metrics.dev_eval import dev_eval, epc, rates_at


def bob_cllr(gen, imp):
    """bob.measure calibration.cllr, literally: mean log2(1 + e^-s) of the genuine and
    mean log2(1 + e^s) of the impostor scores, halved."""
    pos = sum(math.log2(1.0 + math.exp(-s)) for s in gen) / len(gen)
    neg = sum(math.log2(1.0 + math.exp(s)) for s in imp) / len(imp)
    return (pos + neg) / 2.0


def literal_min_cllr(gen, imp):
    """minCllr of tie-free scores: PAV of the 0/1 labels in ascending score order (one
    score at a time, merging violators until none is left), LLR = logit - ln(Ng/Ni)."""
    scores = np.concatenate([gen, imp])
    labels = np.concatenate([np.ones(len(gen)), np.zeros(len(imp))])[np.argsort(scores)]
    blocks = [[y, 1.0] for y in labels]
    merged = True
    while merged:
        merged = False
        for i in range(len(blocks) - 1):
            if blocks[i][0] > blocks[i + 1][0]:
                (a, wa), (b, wb) = blocks[i], blocks[i + 1]
                blocks[i:i + 2] = [[(a * wa + b * wb) / (wa + wb), wa + wb]]
                merged = True
                break
    post = np.concatenate([[m] * int(w) for m, w in blocks])
    with np.errstate(divide="ignore"):
        llr = np.log(post) - np.log(1 - post) - math.log(len(gen) / len(imp))
    lab = labels.astype(bool)
    with np.errstate(over="ignore"):
        pos = np.mean(np.logaddexp(0, -llr[lab])) / math.log(2)
        neg = np.mean(np.logaddexp(0, llr[~lab])) / math.log(2)
    return (pos + neg) / 2


def kaldi_min_dcf(gen, imp, p_target, c_miss, c_fa):
    """kaldi compute_min_dcf.py, literally: thresholds at each sorted score, a trial with
    score > t accepted, min over t of the cost, divided by min(c_miss p, c_fa (1 - p))."""
    scores = np.concatenate([gen, imp])
    labels = np.concatenate([np.ones(len(gen)), np.zeros(len(imp))])
    order = np.argsort(scores, kind="stable")
    lab = labels[order]
    fnr = np.cumsum(lab) / lab.sum()
    fpr = 1 - np.cumsum(1 - lab) / (1 - lab).sum()
    cost = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
    return cost.min() / min(c_miss * p_target, c_fa * (1 - p_target))


def test_cllr_hand_cases():
    r = verification([math.log(3)], [-math.log(3)])
    assert r.cllr == pytest.approx(math.log2(4 / 3), abs=1e-15)  # log2(1 + 1/3) each side
    assert verification([0.0, 0.0], [0.0]).cllr == pytest.approx(1.0, abs=1e-15)
    rng = np.random.default_rng(0)
    g, i = rng.normal(1.5, 1, 50), rng.normal(-1, 1, 70)
    assert verification(g, i).cllr == pytest.approx(bob_cllr(g, i), rel=1e-12)
    assert verification(g, i).as_dict()["Cllr"] == verification(g, i).cllr


def test_min_cllr_hand_cases():
    # ascending 0(i) 1(g) 2(i) 3(g): PAV gives 0, 1/2, 1/2, 1; prior odds 1; LLR -inf, 0, 0,
    # +inf; Cllr = (log2(2) / 2 + log2(2) / 2) / 2 = 1/2
    assert verification([1.0, 3.0], [0.0, 2.0]).min_cllr == pytest.approx(0.5, abs=1e-15)
    assert verification([2.0, 3.0], [0.0, 1.0]).min_cllr == 0.0  # separated
    assert verification([1.0, 1.0], [1.0, 1.0, 1.0]).min_cllr == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("seed", [1, 2])
def test_min_cllr_equals_literal_pav_and_is_monotone_invariant(seed):
    rng = np.random.default_rng(seed)
    g, i = rng.normal(1.0, 1, 40), rng.normal(-0.5, 1.2, 60)
    r = verification(g, i)
    assert r.min_cllr == pytest.approx(literal_min_cllr(g, i), rel=1e-12)
    assert r.min_cllr <= r.cllr
    assert verification(np.exp(g), np.exp(i)).min_cllr == pytest.approx(r.min_cllr, rel=1e-12)


def test_pav():
    np.testing.assert_allclose(pav(np.array([1.0, 3.0, 2.0, 2.0, 5.0]), np.ones(5)),
                               [1, 7 / 3, 7 / 3, 7 / 3, 5])
    np.testing.assert_allclose(pav(np.array([1.0, 0.0]), np.array([1.0, 3.0])), [0.25, 0.25])


def test_min_dcf_hand_case_and_kaldi():
    # genuine 3, 1; impostor 2, 0; p_target 0.5: accepting >= 3 misses 1/2, accepts no
    # impostor: 0.25 / c_def 0.5 = 0.5; no operating point does better
    r = verification([3.0, 1.0], [2.0, 0.0], p_target=0.5)
    assert (r.min_dcf, r.min_dcf_threshold) == (0.5, 3.0)
    rng = np.random.default_rng(3)
    g, i = rng.normal(2, 1, 80), rng.normal(0, 1, 300)
    for p, cm, cf in ((0.01, 1.0, 1.0), (0.05, 1.0, 1.0), (0.3, 2.0, 1.0)):
        r = verification(g, i, p_target=p, c_miss=cm, c_fa=cf)
        assert r.min_dcf == pytest.approx(kaldi_min_dcf(g, i, p, cm, cf), rel=1e-12)
        assert r.dcf_costs == (p, cm, cf)


def test_act_dcf_bayes_threshold():
    # p_target 0.5, equal costs: Bayes threshold ln(1) = 0; LLRs 1, -1 | 0.5, -2:
    # miss 1/2 (the -1), false accept 1/2 (the 0.5): (0.25 + 0.25) / 0.5 = 1
    r = verification([1.0, -1.0], [0.5, -2.0], p_target=0.5)
    assert r.act_dcf == pytest.approx(1.0, abs=1e-15)
    assert r.as_dict()["actDCF"] == r.act_dcf


@pytest.mark.parametrize("kw,name", [(dict(p_target=0.0), "p_target"),
                                     (dict(p_target=1.5), "p_target"),
                                     (dict(c_miss=-1.0), "c_miss"),
                                     (dict(c_fa=float("nan")), "c_fa")])
def test_costs_are_checked(kw, name):
    with pytest.raises(ValueError, match=name):
        verification([1.0], [0.0], **kw)


# ---------------------------------------------------------------------------
# dev -> eval, EPC
# ---------------------------------------------------------------------------
def test_rates_at_fixed_thresholds():
    fmr, fnmr = rates_at([2.0, 4.0], [1.0, 3.0], [0.5, 2.0, 3.0, 4.5])
    np.testing.assert_array_equal(fmr, [1.0, 0.5, 0.5, 0.0])  # #{imp >= t} / 2
    np.testing.assert_array_equal(fnmr, [0.0, 0.0, 0.5, 1.0])  # #{gen < t} / 2


def test_dev_eval_hand_case():
    # dev: genuine 2 4 5 6, impostor -1 0 1 3. EER threshold (bob midpoints) 2.5 with
    # FMR = FNMR = 1/4; conservative FMR <= 25%: t = 3 (one impostor of 4 at >= 3)
    d = dev_eval([2.0, 4.0, 5.0, 6.0], [1.0, 3.0, 0.0, -1.0], [2.0, 4.0], [1.0, 3.0],
                 fmrs=[0.25])
    eer, fmr = d.points
    assert (eer.name, eer.threshold, eer.dev_fmr, eer.dev_fnmr) == ("EER", 2.5, 0.25, 0.25)
    # eval genuine 2, 4 and impostor 1, 3 at t = 2.5: one of each wrong
    assert (eer.eval_fmr, eer.eval_fnmr, eer.eval_hter) == (0.5, 0.5, 0.5)
    assert (fmr.name, fmr.threshold, fmr.dev_fmr) == ("FMR=25.00%", 3.0, 0.25)
    assert (fmr.eval_fmr, fmr.eval_fnmr) == (0.5, 0.5)  # 3 >= 3 accepted; 2 < 3 missed
    out = d.as_dict()
    assert out["EER_eval_HTER"] == 0.5 and out["FMR=25.00%_threshold"] == 3.0
    # the eval set's own EER threshold plays no part: shift eval, rates follow the dev one
    shifted = dev_eval([2.0, 4.0, 5.0, 6.0], [1.0, 3.0, 0.0, -1.0], [12.0, 14.0],
                       [11.0, 13.0], fmrs=[0.25])
    assert shifted.points[0].eval_fmr == 1.0 and shifted.points[0].eval_fnmr == 0.0


def test_epc_hand_case():
    # dev genuine 2, 4; impostor 1, 3. Candidates (ascending): below 1, 1.5, 2.5, 3.5,
    # above 4 with FMR 1, 1/2, 1/2, 0, 0 and FNMR 0, 0, 1/2, 1/2, 1.
    # alpha 0: min FNMR -> the lowest threshold; 0.5: costs .5 .25 .5 .25 .5 -> 1.5;
    # 1: min FMR -> 3.5. Eval = dev: HTER 1/2, 1/4, 1/4.
    a, hter, thr = epc([2.0, 4.0], [1.0, 3.0], [2.0, 4.0], [1.0, 3.0], n_points=3)
    np.testing.assert_array_equal(a, [0.0, 0.5, 1.0])
    assert thr[0] < 1.0 and list(thr[1:]) == [1.5, 3.5]
    np.testing.assert_array_equal(hter, [0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="n_points"):
        epc([2.0], [1.0], [2.0], [1.0], n_points=1)


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------
def _lists(d, name, gen, imp):
    (d / f"{name}_gen.txt").write_text("\n".join(map(str, gen)) + "\n")
    (d / f"{name}_imp.txt").write_text("\n".join(map(str, imp)) + "\n")
    return [str(d / f"{name}_gen.txt"), str(d / f"{name}_imp.txt")]


def test_cli_dev_eval(tmp_path, capsys):
    rng = np.random.default_rng(7)
    dev = _lists(tmp_path, "dev", rng.normal(2, 1, 60).round(3), rng.normal(0, 1, 200).round(3))
    ev = _lists(tmp_path, "eval", rng.normal(2, 1, 50).round(3), rng.normal(0, 1, 150).round(3))
    out = tmp_path / "v.json"
    assert cli.main(["verify", "--dev", *dev, "--eval", *ev, "--fmrs", "0.01,0.1",
                     "--epc-points", "11", "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "minDCF" in text and "eval HTER" in text and "FMR=10.00%" in text
    data = json.loads(out.read_text())
    assert set(data) == {"dev", "eval", "dev_eval", "epc"}
    g = lambda f: np.loadtxt(f)  # noqa: E731
    want = dev_eval(g(dev[0]), g(dev[1]), g(ev[0]), g(ev[1]), [0.01, 0.1], epc_points=11)
    assert data["dev_eval"] == pytest.approx(want.as_dict(), abs=0)
    assert data["epc"]["eval_HTER"] == list(want.epc[1])
    assert data["dev"]["minCllr"] == want.dev.min_cllr
    assert data["eval"]["Cllr"] == want.eval.cllr
    pytest.importorskip("matplotlib")
    assert cli.main(["verify", "--dev", *dev, "--eval", *ev, "--plots", str(tmp_path / "p"),
                     "--epc-points", "5", "--quiet"]) == 0
    assert (tmp_path / "p" / "epc.png").stat().st_size > 1000


@pytest.mark.parametrize("args,needle", [
    (["--dev", "A"], "--dev and --eval go together"),
    (["--p-target", "0"], "p-target"),
    ([], "give score FILEs"),
    (["--epc-points", "1", "--dev", "A", "--eval", "B"], "--epc-points"),
])
def test_cli_dev_eval_errors(tmp_path, capsys, args, needle):
    assert cli.main(["verify", *args]) == 2
    assert needle in capsys.readouterr().err
