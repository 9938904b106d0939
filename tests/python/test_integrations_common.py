"""What the trainer integrations share (efcomm.integrations._common), without a trainer: which
saved rank's state a rank takes, and a checkpoint folder without efcomm state."""

import pytest

import efcomm
from efcomm.integrations._common import check_options, choose, load_rank_file


def saved(world, ranks):
    return {r: {"world_size": world, "rank": r} for r in ranks}


def test_a_rank_takes_its_own_state():
    entries = saved(4, range(4))
    assert choose(list(entries), entries.get, 2, 4, "here") == entries[2]


def test_at_another_world_size_rank_r_takes_saved_rank_r_mod_n():
    entries = saved(2, range(2))
    assert [choose(list(entries), entries.get, r, 4, "here")["rank"] for r in range(4)] == [0, 1, 0, 1]
    unstepped = {0: {"world_size": None}}  # saved before the first exchange: any rank's will do
    assert choose([0], unstepped.get, 1, 2, "here") == unstepped[0]


def test_a_missing_rank_of_the_same_world_size_raises():
    entries = saved(2, [0])  # rank 1's file lost, or a file written by a rank that held its own state only
    with pytest.raises(
        ValueError, match=r"here holds the efcomm state of ranks \[0\] of a run of 2 ranks, not of rank 1"
    ):
        choose(list(entries), entries.get, 1, 2, "here")
    with pytest.raises(ValueError, match="here holds no efcomm state"):
        choose([], {}.get, 0, 2, "here")


def test_a_checkpoint_folder_without_efcomm_state_warns_and_loads_nothing(tmp_path):
    with pytest.warns(
        UserWarning, match=r"who: the checkpoint .* holds no efcomm state; the error-feedback state starts afresh"
    ):
        assert load_rank_file(None, str(tmp_path), "who") is False


def test_bad_arguments_raise_before_the_trainer_starts():
    check_options("ef21", efcomm.TopK(0.1), {"min_compress_numel": 32, "hierarchy": "auto"})
    with pytest.raises(ValueError, match=r"method \('ef42'\)"):
        check_options("ef42", None, {})
    with pytest.raises(TypeError, match="min_compress"):
        check_options("ef", None, {"min_compress": 32})
