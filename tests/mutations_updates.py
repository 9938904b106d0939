"""The faults of efcomm.compress_updates (issue 26) that tests/mutation_check.py plants, one at
a time, and the tests that must catch each: test_updates.py's one-rank tests (the rule written
out, overflows and the scaler, resume) and the sparsity warm-up's bytes."""

UPDATES = "torch_ext/efcomm/updates.py"
TESTS = "tests/python/test_updates.py"
RULE = f"{TESTS}::test_the_exchange_is_the_written_out_rule"

MUTATIONS = [
    dict(
        name="updates-delta-sign",
        covers="the change sent is anchor - x (the outer step subtracts it)",
        path=UPDATES,
        old="            delta = anchor - current",
        new="            delta = current - anchor",
        tests=[RULE],
    ),
    dict(
        name="updates-outer-lr-ignored",
        covers="the outer step is scaled by outer_lr",
        path=UPDATES,
        old="            anchor.sub_(step, alpha=self.outer_lr)",
        new="            anchor.sub_(step)",
        tests=[RULE],
    ),
    dict(
        name="updates-nesterov-without-momentum-factor",
        covers="Nesterov's outer step: out + mu m",
        path=UPDATES,
        old="out.add(m, alpha=self.outer_momentum) if self.nesterov else m",
        new="out.add(m) if self.nesterov else m",
        tests=[RULE],
    ),
    dict(
        name="updates-dense-bytes-per-exchange",
        covers="dense_bytes counts every optimizer step's gradient, local steps included",
        path=UPDATES,
        old="            dense = sum(p.numel() * p.element_size() for p in params) * since",
        new="            dense = sum(p.numel() * p.element_size() for p in params)",
        tests=[RULE],
    ),
    dict(
        name="updates-nonfinite-step-taken",
        covers="a rank whose gradient holds inf/NaN skips its inner step",
        path=UPDATES,
        old="        if self._gradients_finite():",
        new="        if self._gradients_finite() or True:",
        tests=[f"{TESTS}::test_an_overflow_skips_the_inner_step_plain_and_through_grad_scaler"],
    ),
    dict(
        name="updates-scale-left-on-gradients",
        covers="GradScaler's scale is removed from the gradients before the inner step",
        path=UPDATES,
        old="                torch._foreach_mul_(grads, scale.double().reciprocal().float())",
        new="                pass",
        tests=[f"{TESTS}::test_an_overflow_skips_the_inner_step_plain_and_through_grad_scaler"],
    ),
    dict(
        name="updates-resume-from-the-anchor",
        covers="a resume between exchanges restores this rank's own parameters",
        path=UPDATES,
        old='            self._write([p.to(device) for p in entry["params"]])',
        new="            self._write(self._anchors)",
        tests=[f"{TESTS}::test_a_save_between_exchanges_resumes_bit_for_bit_in_this_process[state_dict]"],
    ),
    dict(
        name="warmup-constant-ratio",
        covers="the sparsity warm-up's kept fraction falls geometrically to the ratio",
        path="torch_ext/efcomm/state.py",
        old="(self.wire.ratio / self.warmup_start) ** (step / self.sparsity_warmup)",
        new="(self.wire.ratio / self.warmup_start) ** 0",
        tests=[f"{TESTS}::test_sparsity_warmup_sends_a_falling_fraction_and_counts_its_bytes"],
    ),
]
