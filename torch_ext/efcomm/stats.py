"""Communication accounting of the hook."""

import warnings
from dataclasses import dataclass, field

# Steps in a row whose aggregate held inf/NaN before the hook warns that the run diverged.
DIVERGED_AFTER = 3


@dataclass
class CommStats:
    """Bytes this rank contributed to collectives, next to what dense all-reduce would send.

    ``bytes_sent`` counts this rank's payload in the collectives efcomm runs (its message for an
    all-gather, its buffer for an all-reduce), not the traffic a collective algorithm generates
    on the wire; ``dense_bytes`` counts, for the same exchanges, the payload of the dense
    collective they replace (DDP's all-reduce of the bucket; under efcomm.register_fsdp, native
    HSDP's all-reduce of the shard between replicas, or FSDP's reduce-scatter input). With a
    hierarchy (efcomm.hierarchy), ``bytes_by_group`` splits ``bytes_sent`` into "intra" (inside
    the node: the dense reduce-scatter and all-gather) and "inter" (between nodes: the
    compressed messages). ``native_bytes_by_group`` counts collectives that efcomm neither runs
    nor replaces (under register_fsdp with a replicate group: FSDP's own reduce-scatter inside
    the node, "intra", the same bytes as native HSDP's): in neither ``bytes_sent`` nor
    ``dense_bytes``. ``intra_node_bytes`` and ``inter_node_bytes`` add them up per group.
    ``history`` has one entry per step (a step ends with the last bucket of a backward pass;
    under register_fsdp, with the backward pass).
    ``initialisations`` counts the dense exchanges that started a bucket's state and
    ``relayouts`` the buckets whose state was carried over to a new DDP bucket layout;
    ``nonfinite_resets`` the buckets restarted after a step whose aggregate held inf/NaN,
    ``nonfinite_steps`` the steps with at least one such restart, and ``diverged`` whether
    such steps came ``DIVERGED_AFTER`` times in a row: an AMP overflow step now and then is
    expected (GradScaler skips it), a run that restarts its state every step has diverged
    (its parameters are likely non-finite), and the hook warns about it once.
    """

    bytes_sent: int = 0
    dense_bytes: int = 0
    steps: int = 0
    initialisations: int = 0
    relayouts: int = 0
    nonfinite_resets: int = 0
    nonfinite_steps: int = 0
    diverged: bool = False
    bytes_by_group: dict = field(default_factory=dict)
    native_bytes_by_group: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    _step_sent: int = 0
    _step_dense: int = 0
    _last_nonfinite_step: int = -2
    _nonfinite_streak: int = 0

    def record_group(self, group: str, sent: int) -> None:
        """Bytes this rank contributes to a collective over ``group`` ("flat"; with a
        hierarchy, "intra" inside the node and "inter" between nodes)."""
        self.bytes_sent += sent
        self._step_sent += sent
        self.bytes_by_group[group] = self.bytes_by_group.get(group, 0) + sent

    def record_native(self, group: str, sent: int) -> None:
        """Bytes this rank contributes to a collective that efcomm neither runs nor replaces
        (FSDP's reduce-scatter inside the node): outside ``bytes_sent`` and ``dense_bytes``."""
        self.native_bytes_by_group[group] = self.native_bytes_by_group.get(group, 0) + sent

    @property
    def inter_node_bytes(self) -> int:
        """Bytes sent between nodes: with a hierarchy (or FSDP's replicas), its "inter"
        exchanges; else all of them."""
        return self.bytes_by_group.get("inter", 0) + self.bytes_by_group.get("flat", 0)

    @property
    def intra_node_bytes(self) -> int:
        """Bytes sent inside the node: efcomm's (a hierarchy's) and FSDP's own reduce-scatter."""
        return self.bytes_by_group.get("intra", 0) + self.native_bytes_by_group.get("intra", 0)

    def record_nonfinite_reset(self) -> None:
        """A bucket restarts because the last step's aggregate held inf/NaN."""
        self.nonfinite_resets += 1
        if self._last_nonfinite_step == self.steps:
            return  # this step is already counted
        self._nonfinite_streak = self._nonfinite_streak + 1 if self._last_nonfinite_step == self.steps - 1 else 1
        self._last_nonfinite_step = self.steps
        self.nonfinite_steps += 1
        if self._nonfinite_streak >= DIVERGED_AFTER and not self.diverged:
            self.diverged = True
            warnings.warn(
                f"efcomm: the aggregated gradients held inf/NaN at {self._nonfinite_streak} steps in a row "
                f"(step {self.steps}): the run has likely diverged (check the parameters and the learning "
                "rate); the hook restarts the affected buckets' state at every such step",
                RuntimeWarning,
                stacklevel=2,
            )

    def record(self, sent: int, dense: int, last_bucket: bool, group: str = "flat") -> None:
        self.record_group(group, sent)
        self.dense_bytes += dense
        self._step_dense += dense
        if last_bucket:
            self.close_step()

    def close_step(self) -> None:
        """Ends the step: its bytes go into ``history`` and ``steps`` counts it."""
        self.history.append({"step": self.steps, "bytes_sent": self._step_sent, "dense_bytes": self._step_dense})
        self.steps += 1
        self._step_sent = 0
        self._step_dense = 0

    @property
    def compression_factor(self) -> float:
        """``dense_bytes / bytes_sent`` over all recorded steps: the payload of the dense
        collectives efcomm replaced against the payload of what efcomm sent in their place, over
        the same exchanges (collectives efcomm does not replace, ``native_bytes_by_group``, are in
        neither). 1.0 before anything is sent."""
        return self.dense_bytes / self.bytes_sent if self.bytes_sent else 1.0

    def state_dict(self) -> dict:
        return {
            "bytes_sent": self.bytes_sent,
            "dense_bytes": self.dense_bytes,
            "steps": self.steps,
            "initialisations": self.initialisations,
            "relayouts": self.relayouts,
            "nonfinite_resets": self.nonfinite_resets,
            "nonfinite_steps": self.nonfinite_steps,
            "diverged": self.diverged,
            "bytes_by_group": dict(self.bytes_by_group),
            "native_bytes_by_group": dict(self.native_bytes_by_group),
            "history": tuple(dict(entry) for entry in self.history),  # a tuple: one leaf for DCP
        }

    def load_state_dict(self, state: dict) -> None:
        self.bytes_sent = int(state["bytes_sent"])
        self.dense_bytes = int(state["dense_bytes"])
        self.steps = int(state["steps"])
        self.initialisations = int(state["initialisations"])
        self.relayouts = int(state["relayouts"])
        self.nonfinite_resets = int(state["nonfinite_resets"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.diverged = bool(state.get("diverged", False))
        self.bytes_by_group = {str(k): int(v) for k, v in state.get("bytes_by_group", {}).items()}
        self.native_bytes_by_group = {str(k): int(v) for k, v in state.get("native_bytes_by_group", {}).items()}
        self.history = [dict(entry) for entry in state["history"]]
        self._step_sent = 0
        self._step_dense = 0
