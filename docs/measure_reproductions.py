"""Prints the measured column of docs/reproductions.md: every number of the table, from the
same runs as the tests (tests/python/test_sim*.py), one line per claim.

    PYTHONPATH=torch_ext python docs/measure_reproductions.py      # about a minute on one core
"""

import dataclasses
import math

import torch

from efcomm import FP8, QSGD, Clip, Identity, Induced, Int8, Natural, NonUniformRandK, RandK, ScaledSign, TopK, sim
from efcomm.methods import CLAG, EF21SGDM, EF21W, LAG, AdaCGD, Clip21, EControl, MoTEF
from efcomm.sim import problems
from efcomm.sim.asynchrony import asynchronous_sgd, shuffled_sgd
from efcomm.sim.bidirectional import ef21_bc, total_bits
from efcomm.sim.participation import Sampling, dcsgd_pp, ef21_pp
from efcomm.sim.personalized import fedavg, local_training
from efcomm.sim.second_order import Bernoulli, Contractive, Lazy, Threshold, basis_learn, newton_3pc

LOGISTIC = dict(n=5, d=20, m=40)
HET = [1.0] * 9 + [100.0]


def reach(h, rel):
    t = sim.steps_to_reach(h, rel * h.grad_norm_sq[0])
    return (t, None if t is None else h.bits_per_worker[t])


def floor(h, k):
    return sum(h.grad_norm_sq[-k:]) / k


def stay(h, target=1e-4, window=200):
    g = h.grad_norm_sq
    hit = next((t for t in range(len(g) - window) if max(g[t : t + window]) <= target * g[0]), None)
    return math.inf if hit is None else h.bits_per_worker[hit]


def line(name, **values):
    text = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
    print(f"{name}: {text}", flush=True)


def main():
    torch.set_num_threads(1)
    cx = problems.beznosikov_counterexample()
    line(
        "counterexample",
        none_lr01=sim.simulate(cx, "none", TopK(k=1), steps=40, lr=0.1).x_norm[-1],
        ef=sim.simulate(cx, "ef", TopK(k=1), steps=500, lr=0.05).x_norm[-1],
        ef21=sim.simulate(cx, "ef21", TopK(k=1), steps=500, lr=0.05).x_norm[-1],
    )
    q = problems.quadratic(HET, d=20)
    a = TopK(k=4).alpha(20)
    out = {}
    for name, c in (("ef21", TopK(k=4)), ("identity", Identity())):
        for mean, Lt, steps in (("am", q.L_am, 260), ("qm", q.L_qm, 700)):
            out[name, mean] = reach(sim.simulate(q, "ef21", c, steps=steps, lr=sim.ef21_stepsize(a, q.L, Lt)), 1e-6)[0]
    xi = math.sqrt((1 - a) / (1 - math.sqrt(1 - a)) ** 2)
    far = sim.simulate(q, "ef21", TopK(k=4), steps=120, lr=8 * sim.ef21_stepsize(a, q.L, q.L_am))
    w = sim.simulate(q, EF21W.from_smoothness(q.L_i), TopK(k=4), steps=260, lr=sim.ef21_stepsize(a, q.L, q.L_am))
    line(
        "ef21-w step ratio",
        ef21=f"{out['ef21', 'qm']}/{out['ef21', 'am']}",
        identity=f"{out['identity', 'qm']}/{out['identity', 'am']}",
        predicted=(q.L + q.L_qm * xi) / (q.L + q.L_am * xi),
        ef21w_steps=reach(w, 1e-6)[0],
        at_8x_am=far.grad_norm_sq[-1] / far.grad_norm_sq[0],
    )
    rf = problems.rare_features(n=6, r=4, c=2)
    rare = sim.ef21_stepsize(0.25, rf.L, problems.rare_features_smoothness(rf.L_i, c=2))
    orig = sim.ef21_stepsize(0.25, rf.L, rf.L_qm)
    ratios = {}
    for name, c in (("ef21", TopK(k=1)), ("identity", Identity())):
        fast = sim.simulate(rf, "ef21", c, steps=160, lr=rare)
        slow = sim.simulate(rf, "ef21", c, steps=340, lr=orig)
        t = 1e-4 * fast.grad_norm_sq[0]
        ratios[name] = sim.steps_to_reach(slow, t) / sim.steps_to_reach(fast, t)
    dense = problems.rare_features(n=6, r=4, c=6)
    d16 = sim.simulate(dense, "ef21", TopK(k=1), steps=300, lr=16 * sim.ef21_stepsize(0.25, dense.L, dense.L_qm))
    ef21 = sim.simulate(rf, "ef21", TopK(k=1), steps=160, lr=rare)
    gd = sim.simulate(rf, "none", Identity(), steps=60, lr=1 / rf.L)
    target = 1e-4 * ef21.grad_norm_sq[0]
    line(
        "rare features",
        ef21=ratios["ef21"],
        identity=ratios["identity"],
        predicted=rare / orig,
        c_n_at_16x_qm=d16.grad_norm_sq[-1] / d16.grad_norm_sq[0],
        ef21_bits=ef21.bits_per_worker[sim.steps_to_reach(ef21, target)],
        gd_bits=sim.steps_to_reach(gd, target) * 64 * 4,
    )
    c1 = TopK(k=1)
    lr16 = 16 * sim.ef21_stepsize(c1.alpha(20), q.L, q.L_qm)
    line(
        "heterogeneity (600 steps, 16x qm)",
        start=sim.simulate(q, "ef", c1, steps=0, lr=lr16).grad_norm_sq[0],
        **{
            n: sim.simulate(q, m, c1, steps=600, lr=lr16).grad_norm_sq[-1]
            for n, m in (("ef", "ef"), ("econtrol", EControl()), ("ef21", "ef21"))
        },
    )
    noisy = problems.with_gradient_noise(problems.quadratic([1.0, 1.0, 1.0, 10.0], d=20), sigma=1.0)
    lr = sim.ef21_stepsize(c1.alpha(20), noisy.L, noisy.L_am)
    line(
        "noise floors (Top-1)",
        **{
            n: floor(sim.simulate(noisy, m, c1, steps=1500, lr=lr, batch_size=1, seed=1), 500)
            for n, m in (("ef21", "ef21"), ("econtrol", EControl()), ("ef", "ef"))
        },
    )
    hn = problems.with_gradient_noise(q, sigma=0.3)
    lr = 2 * sim.ef21_stepsize(c1.alpha(20), hn.L, hn.L_am)
    line(
        "heterogeneity + noise (2x am)",
        **{
            n: floor(sim.simulate(hn, m, c1, steps=1000, lr=lr, batch_size=1, seed=1), 300)
            for n, m in (("econtrol", EControl()), ("ef", "ef"), ("ef21", "ef21"))
        },
    )
    c2 = TopK(k=2)
    lr = sim.ef21_stepsize(c2.alpha(20), noisy.L, noisy.L_am)
    line(
        "momentum (Top-2)",
        **{
            n: floor(sim.simulate(noisy, m, c2, steps=900, lr=lr, batch_size=1, seed=1), 300)
            for n, m in (
                ("ef21", "ef21"),
                ("ef21_sgdm", EF21SGDM(eta=0.1)),
                ("motef_lam005", MoTEF(gamma=0.1, lam=0.05)),
                ("motef_lam1", MoTEF(gamma=0.1, lam=1.0)),
            )
        },
    )
    lg = problems.logistic_nonconvex(**LOGISTIC)
    lr = sim.ef21_stepsize(1 / 20, lg.L, lg.L_qm)
    line(
        "logistic Top-1 (400 steps)",
        start=sim.simulate(lg, "none", c1, steps=0, lr=lr).grad_norm_sq[0],
        **{m: sim.simulate(lg, m, c1, steps=400, lr=lr).grad_norm_sq[-1] for m in ("none", "ef", "ef21")},
    )
    line(
        "lag (20x, steps, bits)",
        **{f"zeta{z}": reach(sim.simulate(lg, LAG(z), c1, steps=300, lr=20 * lr), 1e-6) for z in (0.0, 16.0)},
    )
    lr16 = 16 * lr
    line(
        "clag / adacgd (16x, steps, bits)",
        ef21_top4=reach(sim.simulate(lg, "ef21", TopK(k=4), steps=140, lr=lr16), 1e-6),
        clag16_top4=reach(sim.simulate(lg, CLAG(16.0), TopK(k=4), steps=140, lr=lr16), 1e-6),
        clag0_top4=reach(sim.simulate(lg, CLAG(0.0), TopK(k=4), steps=140, lr=lr16), 1e-6),
        adacgd16=reach(sim.simulate(lg, AdaCGD(ratios=(0.05, 0.2, 0.5), zeta=16.0), c1, steps=140, lr=lr16), 1e-6),
        ef21_top1=reach(sim.simulate(lg, "ef21", c1, steps=140, lr=lr16), 1e-6),
    )
    clip = sim.simulate(lg, Clip21(tau=0.01), c1, steps=600, lr=0.5)
    naive = sim.simulate(lg, "none", Clip(0.01), steps=600, lr=0.5)
    line(
        "clip21 (relative)",
        clip21=clip.grad_norm_sq[-1] / clip.grad_norm_sq[0],
        naive=naive.grad_norm_sq[-1] / naive.grad_norm_sq[0],
    )
    comps = (
        RandK(k=4),
        RandK(k=4, window=True),
        ScaledSign(block=32),
        Natural(block=32),
        Int8(block=32),
        FP8(block=32),
        QSGD(levels=1, block=32).scaled(),
        Induced(TopK(k=2), RandK(k=4, unbiased=True)).scaled(),
    )
    rel = [sim.simulate(lg, "ef21", c, steps=200, lr=0.5) for c in comps]
    line("ef21 every contractive (worst relative)", worst=max(h.grad_norm_sq[-1] / h.grad_norm_sq[0] for h in rel))
    paper = sim.simulate(q, MoTEF(gamma=0.2, per_worker=True), TopK(k=2), steps=500, lr=0.01)
    shared = sim.simulate(q, MoTEF(gamma=0.1), TopK(k=2), steps=500, lr=0.01)
    line(
        "motef heterogeneity",
        paper=paper.grad_norm_sq[-1],
        consensus=paper.consensus[-1],
        shared=shared.grad_norm_sq[-1],
        ef=sim.simulate(q, "ef", TopK(k=2), steps=500, lr=0.01).grad_norm_sq[-1],
    )
    nu = {lr: sim.simulate(cx, "none", NonUniformRandK(k=1), steps=100, lr=lr).x_norm[-1] for lr in (0.05, 0.07, 0.1)}
    ef = {lr: sim.simulate(cx, "ef", c1, steps=100, lr=lr).x_norm[-1] for lr in (0.05, 0.07, 0.1)}
    line(
        "nu rand-1 vs top-1+ef (||x||, 100 steps)",
        **{f"nu{k}": v for k, v in nu.items()},
        **{f"ef{k}": v for k, v in ef.items()},
        uniform005=sim.simulate(cx, "none", RandK(k=1, unbiased=True, shared=False), steps=100, lr=0.05).x_norm[-1],
    )
    line(
        "unbiased on counterexample (||x||, 400 steps)",
        **{
            type(c).__name__: sim.simulate(cx, "none", c, steps=400, lr=0.05).x_norm[-1]
            for c in (
                Induced(TopK(k=1), RandK(k=1, unbiased=True)),
                RandK(k=1, unbiased=True),
                Natural(block=32),
                QSGD(levels=1, block=32),
            )
        },
    )
    ill = problems.ill_conditioned_quadratic()
    line(
        "induced bits to stay below 1e-4",
        induced_vs_rand10=stay(
            sim.simulate(ill, "none", Induced(TopK(k=2), RandK(k=6, unbiased=True)), steps=650, lr=0.5)
        ),
        rand10=stay(sim.simulate(ill, "none", RandK(k=10, unbiased=True), steps=650, lr=0.2)),
        induced_indep_256=stay(
            sim.simulate(ill, "none", Induced(TopK(k=1), RandK(k=3, unbiased=True, shared=False)), steps=360, lr=0.7)
        ),
        ef_top4_256=stay(sim.simulate(ill, "ef", TopK(k=4), steps=360, lr=1.0)),
    )
    pq = problems.quadratic([1.0, 2.0, 4.0, 8.0], d=10)
    induced1 = Induced(TopK(k=1), RandK(k=1, unbiased=True))
    lr = sim.ef21_stepsize(c2.alpha(10), pq.L, pq.L_am)
    pp = {}
    for name, s in (("all", Sampling.independent([1.0] * 4)), ("quarter", Sampling.independent([0.25] * 4))):
        pp[f"ef21pp_{name}"] = reach(ef21_pp(pq, c2, s, steps=450, lr=lr), 1e-9)
        pp[f"dcsgd_floor_{name}"] = floor(dcsgd_pp(pq, induced1, s, steps=450, lr=lr), 150)
    line("partial participation", **pp)
    corr = Sampling.explicit(3, [[0], [1, 2], [0, 1, 2]], [0.3, 0.5, 0.2])
    line(
        "pp counterexample (||x||, 300 rounds)",
        induced=dcsgd_pp(cx, induced1, corr, steps=300, lr=0.05).x_norm[-1],
        top1=dcsgd_pp(cx, c1, corr, steps=300, lr=0.05).x_norm[-1],
    )
    samp = Sampling.independent([0.2, 0.4, 0.7, 1.0])
    fl = {}
    for name, weights in (("weighted", samp.weights), ("unweighted", lambda s: {i: 1 / 4 for i in s})):
        run = Sampling(4, samp.p, samp.draw, name, samp.support)
        run.weights = weights
        for lr in (0.04, 0.01):
            fl[f"{name}_{lr}"] = floor(dcsgd_pp(pq, Identity(), run, steps=round(8 / lr), lr=lr), round(2 / lr))
    line("dcsgd-pp weights", **fl)
    bl = problems.logistic_nonconvex(n=4, d=20, m=40)
    bc = {n: ef21_bc(bl, TopK(k=2), s, steps=150, lr=0.5) for n, s in (("dense", Identity()), ("top2", TopK(k=2)))}
    r = {n: sim.steps_to_reach(t, 1e-8 * t.grad_norm_sq[0]) for n, t in bc.items()}
    line("ef21-bc (steps, bits up+down)", **{n: (r[n], total_bits(bc[n], r[n])) for n in bc})
    fl = {}
    for lr in (0.04, 0.01):
        for a in ("pure", "shuffle"):
            fl[f"{a}_{lr}"] = floor(asynchronous_sgd(pq, [1.0, 1.0, 1.0, 8.0], steps=600, lr=lr, assignment=a), 100)
        fl[f"RR_{lr}"] = floor(shuffled_sgd(pq, epochs=150, lr=lr), 100)
        fl[f"SO_{lr}"] = floor(shuffled_sgd(pq, epochs=150, lr=lr, reshuffle=False), 100)
    line("asynchrony floors", **fl)
    glm = problems.logistic_glm(n=4, d=10, lam=1e-3, decades=1.0)
    mech = {
        "dense": Contractive(Identity()),
        "ef21": Contractive(TopK(k=8)),
        "lag": Lazy(zeta=1.0),
        "clag": Lazy(zeta=1.0, compressor=TopK(k=8)),
        "thr": Threshold(0.5),
        "bern": Bernoulli(0.5, Contractive(TopK(k=8))),
    }
    line(
        "newton-3pc (steps, bits)",
        gd=reach(sim.simulate(glm, "none", Identity(), steps=250, lr=1 / glm.L), 1e-10),
        **{n: reach(newton_3pc(glm, m, steps=12), 1e-10) for n, m in mech.items()},
    )
    cond = {}
    for lam in (1e-3, 1e-4):
        g = problems.logistic_glm(n=4, d=10, lam=lam, decades=1.0)
        cond[f"gd_{lam}"] = reach(sim.simulate(g, "none", Identity(), steps=600, lr=1 / g.L), 1e-10)[0]
        cond[f"3pc_{lam}"] = reach(newton_3pc(g, mech["ef21"], steps=12), 1e-10)[0]
        cond[f"dense_{lam}"] = reach(newton_3pc(g, mech["dense"], steps=12), 1e-10)[0]
    line("condition number (steps)", **cond)
    low = problems.logistic_glm(n=4, d=16, lam=1e-3, rank=2, decades=1.0)
    runs = {
        "newton_dense": newton_3pc(low, Contractive(Identity()), steps=12),
        "bl1_dense": basis_learn(low, Identity(), steps=12),
        "bl1_top1": basis_learn(low, TopK(k=1), steps=12),
        "newton_top20": newton_3pc(low, Contractive(TopK(k=20)), steps=12),
    }
    line("basis learn (steps, bits)", **{n: reach(t, 1e-10) for n, t in runs.items()})
    bidir = basis_learn(low, Identity(), steps=12, model_compressor=TopK(k=4))
    t = reach(bidir, 1e-10)[0]
    line("bl1 broadcast (rounds, bits down)", top4=(t, bidir.bits_down[t]), dense=(2, runs["bl1_dense"].bits_down[2]))
    sp = problems.shared_representation()
    under = dataclasses.replace(sp, u0=sp.u0[:, :1].clone(), y0=sp.y0[:, :1].clone())
    over = {k: local_training(sp, rounds=200, local_steps=k, lr=0.05) for k in (1, 5, 20)}
    line(
        "personalized (rounds to 1e-10)",
        **{f"K{k}": reach(t, 1e-10)[0] for k, t in over.items()},
        loss_K20=over[20].loss[-1],
    )
    line(
        "under-personalized (||grad||^2, 200 rounds)",
        **{f"K{k}": local_training(under, rounds=200, local_steps=k, lr=0.05).grad_norm_sq[-1] for k in (1, 5, 20)},
    )
    line(
        "local GD (||grad||^2, 100 rounds, lr 0.05)",
        **{f"K{k}": fedavg(sp.shared, rounds=100, local_steps=k, lr=0.05).grad_norm_sq[-1] for k in (1, 5)},
    )


if __name__ == "__main__":
    main()
