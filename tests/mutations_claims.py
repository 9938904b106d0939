"""Mutations for the simulator's claims (issue 22, findings 1-11): each replaces a claim's
mechanism in the source by its control, and names the tests that must fail under it (and
pass without it). Read by tests/mutation_check.py. Paths are relative to the repository
root; ``old`` occurs exactly once in its file. Claims that do not reproduce, or hold by
construction, are asserted as such in the tests; a mutation here covers the mechanism that
the remaining, positive part of each claim needs."""

T = "tests/python/"
EF21 = "torch_ext/efcomm/methods/ef21.py"
LAZY = "torch_ext/efcomm/methods/lazy.py"
SIM = "torch_ext/efcomm/sim/"

MUTATIONS = [
    dict(
        name="ef21w-unscaled",
        covers="finding 1: EF21-W without its 1/(n w_i) scaling (the weights then bias h away from the mean gradient)",
        path=EF21,
        old="return g.mul(1.0 / (worker.world * self.weights[worker.rank]))",
        new="return g.clone()",
        tests=[T + "test_sim.py::test_ef21w_is_ef21_with_a_positively_homogeneous_compressor"],
    ),
    dict(
        name="newton-3pc-dense-hessians",
        covers="finding 2: Newton-3PC's contractive mechanism replaced by dense Hessian messages (dense Newton)",
        path=SIM + "second_order.py",
        old="        x = new()\n        c, bits = apply_compressor(self.compressor, (x - h).float(), **key)",
        new="        x = new()\n        c, bits = apply_compressor(Identity(), (x - h).float(), **key)",
        tests=[T + "test_sim_second_order.py::test_newton_3pc_needs_fewer_bits_than_dense_newton_with_every_mechanism"],
    ),
    dict(
        name="newton-3pc-lazy-always-sends",
        covers="finding 2: Newton-3PC's lazy trigger removed (LAG/CLAG send every step)",
        path=SIM + "second_order.py",
        old="if float(((x - h) ** 2).sum()) <= self.zeta * float(((x - y) ** 2).sum()):",
        new="if False:",
        tests=[T + "test_sim_second_order.py::test_newton_3pc_needs_fewer_bits_than_dense_newton_with_every_mechanism"],
    ),
    dict(
        name="clag-never-silent",
        covers="finding 3: CLAG's lazy trigger at zeta = 0 (never silent: EF21 plus the choice)",
        path=LAZY,
        old='return ops.lazy_trigger(g, state["h_local"], state["y"], self.zeta).to(torch.int32)',
        new='return ops.lazy_trigger(g, state["h_local"], state["y"], 0.0).to(torch.int32)',
        tests=[T + "test_sim.py::test_clag_needs_fewer_bits_than_ef21_with_the_same_compressor"],
    ),
    dict(
        name="adacgd-finest-rung",
        covers="finding 3: AdaCGD's adaptive choice at zeta = 0 (always the finest rung)",
        path=LAZY,
        old='return ops.adacgd_choose(g, state["h_local"], state["y"], self.ladder(g.numel()), self.zeta)',
        new='return ops.adacgd_choose(g, state["h_local"], state["y"], self.ladder(g.numel()), 0.0)',
        tests=[T + "test_sim.py::test_adacgd_beats_its_finer_rungs_but_not_the_cheapest_fixed_level"],
    ),
    dict(
        name="nu-rand-1-biased",
        covers="finding 4: NU Rand-1 without its unbiasing (the drawn values sent as they are)",
        path="torch_ext/efcomm/compressors/nonuniform.py",
        old="values = counts.float() * torch.sign(d[drawn].float()) * (l1 / k)",
        new="values = d[drawn].float()",
        tests=[
            T
            + "test_sim_compressors.py::test_non_uniform_rand_1_without_feedback_against_top_1_with_it_on_the_counterexample"
        ],
    ),
    dict(
        name="induced-without-its-unbiased-part",
        covers="finding 5: the induced compressor reduced to its Top-k part (biased)",
        path="torch_ext/efcomm/compressors/induced.py",
        old="        self.unbiased_part.decode_add_(h, gathered[:, split:].contiguous(), ctx, scale, weights)",
        new="        pass",
        tests=[
            T + "test_sim.py::test_unbiased_compressors_make_plain_compressed_sgd_converge_on_the_counterexample",
            T + "test_sim.py::test_induced_compressor_needs_fewer_bits_than_rand_k_where_energy_concentrates",
        ],
    ),
    dict(
        name="econtrol-without-error-control",
        covers="finding 6: EControl's eta e_i term removed (EControl becomes EF21)",
        path=EF21,
        old="p = r + e * eta",
        new="p = r + e * 0.0",
        tests=[
            T + "test_sim.py::test_econtrol_beats_ef_and_ef21_where_heterogeneity_and_noise_meet",
            T + "test_sim.py::test_econtrol_controls_the_noise_that_ef21_amplifies_but_classic_ef_does_better_here",
        ],
    ),
    dict(
        name="econtrol-error-accumulates-negated",
        covers="finding 6 (and 15, the simulator's side): EControl's error e_i accumulating -(g_i - h_i)",
        path=EF21,
        old="        e.add_(r)\n",
        new="        e.sub_(r)\n",
        tests=[
            T + "test_sim.py::test_econtrol_beats_ef_and_ef21_where_heterogeneity_and_noise_meet",
            T + "test_sim.py::test_econtrol_controls_the_noise_that_ef21_amplifies_but_classic_ef_does_better_here",
        ],
    ),
    dict(
        name="econtrol-silent-eta",
        covers="finding 6: EControl's eta > alpha check removed (diverges silently)",
        path=EF21,
        old="if self.eta > alpha and numel not in self._warned:",
        new="if False:",
        tests=[T + "test_sim.py::test_econtrol_warns_when_eta_exceeds_alpha"],
    ),
    dict(
        name="ef21-pp-everyone-updates",
        covers="finding 7: EF21-PP's non-participants update and send too (full participation)",
        path=SIM + "participation.py",
        old="        for i in chosen:\n            c, sent = apply_compressor(",
        new="        for i in range(n):\n            c, sent = apply_compressor(",
        tests=[T + "test_sim_participation.py::test_ef21_pp_reaches_the_exact_solution_where_compressed_sgd_stalls"],
    ),
    dict(
        name="dcsgd-pp-unweighted",
        covers="finding 8: DCSGD-PP's 1/(n p_i) weights made uniform (1/n)",
        path=SIM + "participation.py",
        old="return {i: 1.0 / (self.n * self.p[i]) for i in subset}",
        new="return {i: 1.0 / self.n for i in subset}",
        tests=[T + "test_sim_participation.py::test_unweighted_aggregation_is_biased_under_non_uniform_participation"],
    ),
    dict(
        name="clip21-naive",
        covers="finding 9: Clip21's error feedback removed: each worker clips its gradient, not g_i - h_i "
        "(EF21's encode, which Clip21 inherits)",
        path=EF21,
        old='        return codec.encode_(g, state["h_local"])\n\n    def decode(',
        new="        return codec.encode_(g)\n\n    def decode(",
        tests=[T + "test_sim.py::test_clip21_converges_with_messages_bounded_by_tau"],
    ),
    dict(
        name="personalized-private-part-averaged",
        covers="finding 10: the private y_i averaged with u (no personal parameters)",
        path=SIM + "personalized.py",
        old="        u = us.mean(0)\n",
        new="        u, ys = us.mean(0), ys.mean(0, keepdim=True).expand_as(ys).clone()\n",
        tests=[T + "test_sim_personalized.py::test_local_steps_cost_no_accuracy_when_the_split_is_overpersonalized"],
    ),
    dict(
        name="basis-learn-standard-basis",
        covers="finding 11: Basis Learn's learned bases replaced by the standard basis",
        path=SIM + "second_order.py",
        old="bases.append(vh[s > tol * s[0]].T)",
        new="bases.append(torch.eye(a.shape[1], dtype=torch.float64))",
        tests=[T + "test_sim_second_order.py::test_basis_learn_sends_fewer_bits_when_local_data_is_low_rank"],
    ),
]
