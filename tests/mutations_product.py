"""The product's faults that tests/mutation_check.py plants, one at a time, and the tests that
must catch each (the hook's step logic, in one process: tests/python/test_exact_steps.py pins
the methods' update rules, the dense start, the step after an overflow and bucket rebuilds
bit for bit; test_hierarchy.py the hierarchical exchange; test_elastic.py elastic resume).

Each fault is one the issue 22 review found passing the tests before (by position, no dense
start, no reset, EControl's sign, shards in DDP's order), or a flipped sign in a method's
update, or a slip in the exchange or the accounting that a reader would not notice; issue 27
added the faults of the default configuration and of the FSDP2 path (the step's end, the
averaging, the statistics, checkpoints, the compressed reduce-scatter, non-finite messages).
Most are caught in one process (test_fsdp_state.py feeds a unit's hook by hand); the averaging
over replicas needs several ranks, and runs test_fsdp.py's 2 x 2 launch."""

EXACT = "tests/python/test_exact_steps.py"
RULE = f"{EXACT}::test_each_method_is_its_update_rule_bit_for_bit"
HIER = "tests/python/test_hierarchy.py"

ENGINE = "torch_ext/efcomm/engine.py"
EF21 = "torch_ext/efcomm/methods/ef21.py"
BASIC = "torch_ext/efcomm/methods/basic.py"
LAZY = "torch_ext/efcomm/methods/lazy.py"
MOTEF = "torch_ext/efcomm/methods/motef.py"
HIERARCHY = "torch_ext/efcomm/hierarchy.py"
FSDP = "torch_ext/efcomm/fsdp.py"
FSDP_STATE = "torch_ext/efcomm/fsdp_state.py"
TOPK = "torch_ext/efcomm/compressors/topk.py"
T_FSDP = "tests/python/test_fsdp.py"
T_FSDP_STATE = "tests/python/test_fsdp_state.py"
T_NONFINITE = "tests/python/test_nonfinite.py"
HOOK_BY_HAND = f"{T_FSDP_STATE}::test_a_units_hook_exchanges_and_ends_its_steps_after_fsdps_final_callback"


def rule(*methods: str) -> list:
    return [f"{RULE}[{m}]" for m in methods]


MUTATIONS = [
    # ---- bucket rebuilds, the dense start, overflows (findings 13, 14) ----
    dict(
        name="relayout-by-position",
        covers="a rebuilt bucket's state carried over by parameter name, not by position",
        path="torch_ext/efcomm/bucket_state.py",
        old="    parts = [slices[param] for param in signature[2]]",
        new="    parts = [(slices[p][0], o, n) for p, (o, n) in BucketState(signature, {}).param_slices().items()]",
        tests=[
            f"{EXACT}::test_a_reordering_rebuild_continues_the_run_bit_for_bit",
            f"{EXACT}::test_a_rebuild_into_other_buckets_carries_each_parameters_state_entry_by_entry",
        ],
    ),
    dict(
        name="no-dense-start",
        covers="the dense start (its counter kept, the state started at h = 0 instead)",
        path=ENGINE,
        old="""        if current is None and method.dense_init:
            return (yield from _initialise(state, bucket))""",
        new="""        if current is None and method.dense_init:
            state.stats.initialisations += 1
            state.stats.relayouts -= 1
            current = BucketState(signature, method.init_state(bucket.g, torch.zeros_like(bucket.g), bucket.worker))""",
        tests=[f"{EXACT}::test_the_dense_start_outputs_the_exact_mean"],
    ),
    dict(
        name="dense-start-sums",
        covers="the dense start's output is the mean, not the sum",
        path=ENGINE,
        old="    h = g.detach().clone().div_(worker.world)",
        new="    h = g.detach().clone()",
        tests=[f"{EXACT}::test_the_dense_start_outputs_the_exact_mean"],
    ),
    dict(
        name="no-reset-after-overflow",
        covers="the step after a non-finite one starts afresh (counter kept, state zeroed where non-finite)",
        path=ENGINE,
        old="""        del state.buckets[signature]
        state.stats.record_nonfinite_reset()
        current = None""",
        new="""        state.stats.record_nonfinite_reset()
        current.nonfinite = None
        for tensor in current.tensors.values():
            tensor.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)""",
        tests=[f"{EXACT}::test_the_step_after_an_overflow_starts_the_method_afresh"],
    ),
    dict(
        name="overflow-not-detected",
        covers="a non-finite aggregate is seen in the messages (Top-k values)",
        path=ENGINE,
        old="        segment.nonfinite = nonfinite(out) if flag is None else flag",
        new="        segment.nonfinite = None",
        tests=[f"{EXACT}::test_the_step_after_an_overflow_starts_the_method_afresh"],
    ),
    # ---- each method's update rule (finding 15) ----
    dict(
        name="ef21-aggregate-sign",
        covers="EF21 and Clip21 (EF21's decode): h += (1/n) sum_j c_j",
        path=EF21,
        old='codec.decode_add_(state["h"], gathered)\n',
        new='codec.decode_add_(state["h"], gathered, scale=-1.0)\n',
        tests=rule("ef21", "clip21"),
    ),
    dict(
        name="ef21-local-estimate-frozen",
        covers="EF21: h_i += c_i",
        path=EF21,
        old='        return codec.encode_(g, state["h_local"])',
        new='        return codec.encode_(g, state["h_local"].clone())',
        tests=rule("ef21"),
    ),
    dict(
        name="clip21-threshold",
        covers="Clip21: clipping at tau",
        path="torch_ext/efcomm/compressors/dense.py",
        old="        return float(self.tau)",
        new="        return 2.0 * float(self.tau)",
        tests=rule("clip21"),
    ),
    dict(
        name="ef21-sgdm-momentum-sign",
        covers="EF21-SGDM: v_i = (1 - eta) v_i + eta g_i",
        path=EF21,
        old='state["v"].lerp_(g, self.eta)',
        new='state["v"].lerp_(g, -self.eta)',
        tests=rule("ef21-sgdm"),
    ),
    dict(
        name="econtrol-feedback-sign",
        covers="EControl: delta_i = C(eta e_i + g_i - h_i)",
        path=EF21,
        old="        p = r + e * eta",
        new="        p = r - e * eta",
        tests=rule("econtrol"),
    ),
    dict(
        name="econtrol-error-update-sign",
        covers="EControl: e_i += g_i - h_i - delta_i",
        path=EF21,
        old="codec.decode_add_(e, message.unsqueeze(0), scale=-1.0)  # e += r - delta",
        new="codec.decode_add_(e, message.unsqueeze(0), scale=1.0)  # e += r - delta",
        tests=rule("econtrol"),
    ),
    dict(
        name="econtrol-local-estimate-frozen",
        covers="EControl: h_i += delta_i",
        path=EF21,
        old="        codec.decode_add_(h_local, message.unsqueeze(0))  # h_local += delta",
        new="        pass",
        tests=rule("econtrol"),
    ),
    dict(
        name="econtrol-without-feedback",
        covers="EControl's default eta = alpha (eta = 0 is EF21: the mechanism removed)",
        path=EF21,
        old="        if self.eta is None:\n            return alpha\n",
        new="        if self.eta is None:\n            return 0.0\n",
        tests=rule("econtrol"),
    ),
    dict(
        name="ef21-w-aggregate-sign",
        covers="EF21-W: h += sum_j w_j c_j",
        path=EF21,
        old='codec.decode_add_(state["h"], gathered, weights=self._on_device[device])',
        new='codec.decode_add_(state["h"], gathered, weights=self._on_device[device], scale=-1.0)',
        tests=rule("ef21-w"),
    ),
    dict(
        name="ef21-w-weight-of-another-rank",
        covers="EF21-W: c_i = C(g_i / (n w_i) - h_i), rank i's own weight",
        path=EF21,
        old="self.weights[worker.rank]",
        new="self.weights[worker.world - 1 - worker.rank]",
        tests=rule("ef21-w"),
    ),
    dict(
        name="lazy-aggregate-sign",
        covers="LAG, CLAG: h += (1/n) sum over the senders",
        path=LAZY,
        old='weights=rank_weights(len(rows), worker.world, state["h"].device)',
        new='weights=-rank_weights(len(rows), worker.world, state["h"].device)',
        tests=rule("lag", "clag"),
    ),
    dict(
        name="lazy-mean-over-senders",
        covers="LAG, CLAG: the senders' messages weighted 1/n, not 1/(number of senders)",
        path=LAZY,
        old='weights=rank_weights(len(rows), worker.world, state["h"].device)',
        new='weights=rank_weights(len(rows), len(rows), state["h"].device)',
        tests=rule("lag", "clag"),
    ),
    dict(
        name="lazy-trigger-inverted",
        covers="3PC trigger: send when ||g_i - h_i||^2 > zeta ||g_i - y_i||^2",
        path=LAZY,
        old='return ops.lazy_trigger(g, state["h_local"], state["y"], self.zeta).to(torch.int32)',
        new='return (~ops.lazy_trigger(g, state["h_local"], state["y"], self.zeta)).to(torch.int32)',
        tests=rule("lag", "clag"),
    ),
    dict(
        name="lazy-previous-gradient-kept",
        covers="3PC: y_i = g_i after every step",
        path=LAZY,
        old='        state["y"].copy_(g)',
        new="        pass",
        tests=rule("lag", "clag"),
    ),
    dict(
        name="adacgd-aggregate-sign",
        covers="AdaCGD: h += (1/n) c_j per sender",
        path=LAZY,
        old='self._rung(choice, codec).decode_add_(state["h"], row.unsqueeze(0), weights=weight)',
        new='self._rung(choice, codec).decode_add_(state["h"], row.unsqueeze(0), weights=weight, scale=-1.0)',
        tests=rule("adacgd"),
    ),
    dict(
        name="adacgd-always-finest-rung",
        covers="AdaCGD: the cheapest rung within the bound",
        path=LAZY,
        old="return Codec(TopK(k=self.ladder(codec.numel)[choice - 1]), codec.numel, codec.dtype, codec.ctx)",
        new="return Codec(TopK(k=self.ladder(codec.numel)[-1]), codec.numel, codec.dtype, codec.ctx)",
        tests=rule("adacgd"),
    ),
    dict(
        name="ef-error-sign",
        covers="EF: e_i = p - C(p)",
        path=BASIC,
        old="scale=-1.0)  # e = p - C(p)",
        new="scale=1.0)  # e = p - C(p)",
        tests=rule("ef"),
    ),
    dict(
        name="none-aggregate-sign",
        covers="compressed SGD (none): out = (1/n) sum_j C(g_j)",
        path=BASIC,
        old="codec.decode_add_(out, gathered)",
        new="codec.decode_add_(out, gathered, scale=-1.0)",
        tests=rule("none"),
    ),
    dict(
        name="motef-tracking-sign",
        covers="MoTEF: V_i += gamma (mean G - G_i) + M_i - M_i(previous)",
        path=MOTEF,
        old='ops.motef_track_(g, state["M"], state["V"], state["G"], state["G_mean"], self.lam, self.gamma)',
        new='ops.motef_track_(g, state["M"], state["V"], state["G_mean"], state["G"], self.lam, self.gamma)',
        tests=rule("motef"),
    ),
    dict(
        name="motef-aggregate-sign",
        covers="MoTEF: mean G += (1/n) sum_j c_j",
        path=MOTEF,
        old='codec.decode_add_(state["G_mean"], gathered)',
        new='codec.decode_add_(state["G_mean"], gathered, scale=-1.0)',
        tests=rule("motef"),
    ),
    # ---- the hierarchy (finding 16) ----
    dict(
        name="hierarchy-shards-in-ddp-order",
        covers="hierarchy: shards cut from the bucket's parameters sorted by name",
        path=HIERARCHY,
        old="    if not params or not all(name for name, _ in params) or list(params) == sorted(params):",
        new="    if True:",
        tests=[f"{HIER}::test_a_hierarchical_run_in_another_parameter_order_is_the_same_run_bit_for_bit"],
    ),
    dict(
        name="hierarchy-inter-on-flat-group",
        covers="hierarchy: the compressed exchange among the nodes' ranks of one local rank",
        path=HIERARCHY,
        old='request.final, request.group = False, "inter"',
        new='request.final, request.group = False, "flat"',
        tests=[f"{HIER}::test_each_shard_is_the_flat_method_on_the_node_means"],
    ),
    dict(
        name="hierarchy-node-sum",
        covers="hierarchy: the node's mean gradient (divided by L before the reduce-scatter)",
        path=HIERARCHY,
        old="    padded.div_(local_size)",
        new="    pass",
        tests=[f"{HIER}::test_each_shard_is_the_flat_method_on_the_node_means"],
    ),
    # ---- statistics ----
    dict(
        name="bytes-sent-dense-size",
        covers="bytes_sent counts the message, not the dense bucket",
        path=ENGINE,
        old="state.stats.record(message.numel(), bucket.dense_bytes, bucket.last, bucket.group)",
        new="state.stats.record(bucket.dense_bytes, bucket.dense_bytes, bucket.last, bucket.group)",
        tests=rule("ef21"),
    ),
    dict(
        name="lazy-bytes-without-choice",
        covers="lazy methods' bytes_sent counts the choice every rank sends",
        path=ENGINE,
        old="    sent_bytes = own_choices.numel() * own_choices.element_size()",
        new="    sent_bytes = 0",
        tests=rule("lag"),
    ),
    dict(
        name="hierarchy-intra-bytes",
        covers="hierarchy: bytes inside the node (reduce-scatter and all-gather)",
        path=HIERARCHY,
        old='state.stats.record_group("intra", padded.numel() * es + shard * es)',
        new='state.stats.record_group("intra", padded.numel() * es)',
        tests=[f"{HIER}::test_byte_counts_by_group_match_the_wire_model"],
    ),
    # ---- the default configuration and non-finite messages (issue 27) ----
    dict(
        name="topk-compact-nonfinite-offset",
        covers="Top-k's compact message: its values read after the counts for inf/NaN",
        path=TOPK,
        old="        start = 4 * math.ceil(numel / 65536) if self.index_bits == 16 else 0",
        new="        start = 0",
        tests=[f"{T_NONFINITE}::test_nonfinite_in_reads_the_dtype_on_the_wire"],
    ),
    dict(
        name="topk-nonfinite-in-value-dtype",
        covers="Top-k's inf/NaN read in the values' dtype on the wire (_values), not value_dtype",
        path=TOPK,
        old="self._values(dtype) or dtype)",
        new="self.value_dtype or dtype)",
        tests=[f"{T_NONFINITE}::test_the_default_restarts_after_an_overflow_in_every_bucket_dtype"],
    ),
    dict(
        name="default-compressor-32-bit-indices",
        covers="the default compressor: Top-1% with bf16 values and 16-bit offsets",
        path="torch_ext/efcomm/state.py",
        old="    return TopK(ratio=0.01, value_dtype=torch.bfloat16, index_bits=16)",
        new="    return TopK(ratio=0.01, value_dtype=torch.bfloat16, index_bits=32)",
        tests=[f"{T_NONFINITE}::test_the_default_is_ef_with_top1_in_the_compact_message"],
    ),
    dict(
        name="dense-steps-dropped",
        covers="EFState keeps dense_steps",
        path="torch_ext/efcomm/state.py",
        old="        self.dense_steps = dense_steps",
        new="        self.dense_steps = 0",
        tests=[f"{T_FSDP}::test_scatter_step_runs_dense_steps_first"],
    ),
    # ---- FSDP2 (issue 27) ----
    dict(
        name="scatter-step-ignores-dense-steps",
        covers="the compressed reduce-scatter: the first dense_steps steps dense",
        path=ENGINE,
        old="    if state.stats.steps < state.dense_steps or not state.compresses(shard, g.dtype):",
        new="    if not state.compresses(shard, g.dtype):",
        tests=[f"{T_FSDP}::test_scatter_step_runs_dense_steps_first"],
    ),
    dict(
        name="scatter-step-flag-unread",
        covers="the compressed reduce-scatter: every row restarted after a non-finite step (the exchanged flag)",
        path=ENGINE,
        old="        segment.nonfinite = poisoned",
        new="        pass",
        tests=[f"{T_FSDP}::test_scatter_step_restarts_every_row_after_an_overflow"],
    ),
    dict(
        name="transport-all-reduce-not-shared",
        covers="the in-process transport's all-reduce: every worker gets the sum",
        path="torch_ext/efcomm/transport.py",
        old="                r.tensor.copy_(total)",
        new="                pass",
        tests=[f"{T_FSDP}::test_scatter_step_restarts_every_row_after_an_overflow"],
    ),
    dict(
        name="fsdp-step-never-ends",
        covers="register_fsdp: the step ends after FSDP's final callback of the backward pass",
        path=FSDP,
        old="                state.end_step()",
        new="                pass",
        tests=[HOOK_BY_HAND],
    ),
    dict(
        name="fsdp-step-without-exchange",
        covers="register_fsdp: a backward pass without an exchange (a kept micro-batch) is no step",
        path=FSDP_STATE,
        old="        if self._step_exchanged:",
        new="        if True:",
        tests=[HOOK_BY_HAND],
    ),
    dict(
        name="fsdp-output-not-written",
        covers="register_fsdp: the hook writes the exchange's output into FSDP's shard",
        path=FSDP,
        old="        if out is not reduce_output:\n            reduce_output.copy_(out)",
        new="        if out is not reduce_output:\n            pass",
        tests=[HOOK_BY_HAND],
    ),
    dict(
        name="fsdp-reduce-scatter-counted-as-sent",
        covers="register_fsdp: FSDP's reduce-scatter kept out of bytes_sent (compression_factor like with like)",
        path=FSDP,
        old='        state.stats.record_native("intra", reduce_output.numel() * self.shard_size * es)',
        new='        state.stats.record_group("intra", reduce_output.numel() * self.shard_size * es)',
        tests=[HOOK_BY_HAND],
    ),
    dict(
        name="fsdp-divide-factor-mean",
        covers="register_fsdp: the sum over replicas under set_gradient_divide_factor (native HSDP's)",
        path=FSDP,
        old="            reduce_output.mul_(replicas)",
        new="            pass",
        tests=[
            f"{T_FSDP}::test_fp16_reduce_dtype_and_divide_factor_with_error_feedback_match_the_reference[divide_factor]"
        ],
    ),
    dict(
        name="stats-native-bytes-sent",
        covers="statistics: collectives efcomm does not replace are outside bytes_sent",
        path="torch_ext/efcomm/stats.py",
        old="        self.native_bytes_by_group[group] = self.native_bytes_by_group.get(group, 0) + sent",
        new="        self.native_bytes_by_group[group] = self.native_bytes_by_group.get(group, 0) + sent\n"
        "        self.bytes_sent += sent",
        tests=["tests/python/test_stats.py::test_compression_factor_compares_the_replaced_exchange_only"],
    ),
    dict(
        name="stats-step-not-counted",
        covers="statistics: close_step counts the step",
        path="torch_ext/efcomm/stats.py",
        old="        self.steps += 1",
        new="        pass",
        tests=["tests/python/test_stats.py::test_compression_factor_compares_the_replaced_exchange_only"],
    ),
    dict(
        name="checkpoint-fsdp-entry-by-rank",
        covers="checkpoints: register_fsdp's entry chosen by shard (not by the rank in the group named)",
        path="torch_ext/efcomm/checkpoint.py",
        old='    load_checkpoint = getattr(state, "load_checkpoint", None)',
        new="    load_checkpoint = None",
        tests=[f"{T_FSDP_STATE}::test_the_entry_is_chosen_by_the_shard_this_rank_holds"],
    ),
    dict(
        name="fsdp-wrapper-prefix-kept",
        covers="FSDP layouts named without torch.compile's '_orig_mod.'",
        path=FSDP_STATE,
        old='    return ".".join(part for part in name.split(".") if part not in WRAPPERS)',
        new="    return name",
        tests=[f"{T_FSDP_STATE}::test_wrapper_prefixes_are_stripped_from_loaded_layouts"],
    ),
    dict(
        name="fsdp-reshard-from-the-start",
        covers="FSDP checkpoints at another shard count: each shard cut at its own rows",
        path=FSDP_STATE,
        old="        piece[: (stop - start) * row] = tensor[start * row : stop * row]",
        new="        piece[: (stop - start) * row] = tensor[: (stop - start) * row]",
        tests=[f"{T_FSDP_STATE}::test_another_shard_count_relays_out_one_replicas_shards"],
    ),
    dict(
        name="fsdp-unmatched-state-accepted",
        covers="FSDP checkpoints: a loaded state that matches no unit raises",
        path=FSDP_STATE,
        old="        if unmatched:\n            self.buckets = {}",
        new="        if False:\n            self.buckets = {}",
        tests=[f"{T_FSDP_STATE}::test_a_loaded_state_that_matches_no_unit_raises_naming_both_sides"],
    ),
    # ---- elastic resume ----
    dict(
        name="elastic-reform-skipped",
        covers="elastic resume: per-rank tensors re-formed from the shared ones (EF21: h_i := h)",
        path="torch_ext/efcomm/methods/base.py",
        old="out[local] = tensors[shared].clone() if shared is not None else torch.zeros_like(tensors[local])",
        new="out[local] = tensors[local].clone()",
        tests=[
            "tests/python/test_elastic.py::test_joining_at_another_size_sets_every_local_estimate_to_the_shared_one"
        ],
    ),
    # ---- the trainer integrations ----
    dict(
        name="integrations-hf-rank-file-ignored",
        covers="the HF Trainer's resume_from_checkpoint loads each rank's efcomm state",
        path="torch_ext/efcomm/integrations/transformers.py",
        old="            load_rank_file(self.state, self.resume_from, WHO)",
        new="            pass",
        tests=["tests/python/test_integrations_transformers.py::test_resume_from_checkpoint_continues_bit_for_bit"],
    ),
]
