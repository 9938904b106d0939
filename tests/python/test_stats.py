"""efcomm.stats.CommStats: what bytes_sent, dense_bytes and compression_factor compare, the
bytes of collectives efcomm does not replace kept apart (FSDP's reduce-scatter), and the
end of a step; the numbers by hand."""

from efcomm.stats import CommStats


def test_compression_factor_compares_the_replaced_exchange_only():
    """Two steps: efcomm sends 100 then 60 bytes between replicas in place of native HSDP's
    1000-byte all-reduce each step; FSDP's reduce-scatter sends 4000 bytes inside the node at
    each of 3 backward passes (one of them a micro-batch that did not exchange). The factor is
    2000 / 160; the reduce-scatter is in intra_node_bytes, in neither side."""
    stats = CommStats()
    stats.record_native("intra", 4000)
    stats.record(100, 1000, False, "inter")
    stats.close_step()
    stats.record_native("intra", 4000)
    stats.record_native("intra", 4000)
    stats.record(60, 1000, True, "inter")
    assert (stats.bytes_sent, stats.dense_bytes, stats.steps) == (160, 2000, 2)
    assert stats.compression_factor == 2000 / 160
    assert stats.intra_node_bytes == 12000 and stats.inter_node_bytes == 160
    assert stats.bytes_by_group == {"inter": 160}
    assert stats.history == [
        {"step": 0, "bytes_sent": 100, "dense_bytes": 1000},
        {"step": 1, "bytes_sent": 60, "dense_bytes": 1000},
    ]
    restored = CommStats()
    restored.load_state_dict(stats.state_dict())
    assert restored.intra_node_bytes == 12000 and restored.compression_factor == stats.compression_factor


def test_a_hierarchys_intra_node_exchange_is_efcomms_own():
    """With efcomm.hierarchy, efcomm runs the exchange inside the node too: in bytes_sent."""
    stats = CommStats()
    stats.record_group("intra", 300)
    stats.record(50, 800, True, "inter")
    assert (stats.bytes_sent, stats.intra_node_bytes, stats.inter_node_bytes) == (350, 300, 50)
    assert stats.compression_factor == 800 / 350
    assert CommStats().compression_factor == 1.0
