from collections import Counter

from multitune.data.mixture import epoch_order, step_micro_batches, steps_per_epoch


def test_weights_scale_how_often_each_task_is_seen():
    order = epoch_order([10, 10, 10], [1.0, 2.0, 0.5], seed=0, epoch=0)
    per_task = Counter(i // 10 for i in order)
    assert per_task == {0: 10, 1: 20, 2: 5}
    assert Counter(order[i] for i in range(len(order)) if order[i] >= 10 and order[i] < 20) == {
        i: 2 for i in range(10, 20)
    }


def test_each_epoch_has_its_own_order_and_the_same_one_on_every_call():
    assert epoch_order([50], [1.0], 0, 0) == epoch_order([50], [1.0], 0, 0)
    assert epoch_order([50], [1.0], 0, 0) != epoch_order([50], [1.0], 0, 1)
    assert sorted(epoch_order([50], [1.0], 0, 1)) == list(range(50))


def test_processes_and_micro_batches_partition_each_global_batch():
    order = list(range(100))
    lengths = [i % 7 for i in range(100)]
    world, micro, accum = 2, 3, 2
    assert steps_per_epoch(100, micro * accum * world) == 8
    for step in range(8):
        seen = []
        for rank in range(world):
            groups = step_micro_batches(order, step, rank, world, micro, accum, lengths)
            assert [len(g) for g in groups] == [micro] * accum
            seen += [i for g in groups for i in g]
        assert sorted(seen) == order[step * 12 : (step + 1) * 12]


def test_micro_batches_group_similar_lengths():
    order = list(range(8))
    lengths = [5, 1, 6, 2, 7, 3, 8, 4]
    groups = step_micro_batches(order, 0, 0, 1, 4, 2, lengths)
    assert [sorted(lengths[i] for i in g) for g in groups] == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_strategies_share_the_proportional_epoch_size_differently():
    from multitune.data.mixture import epoch_counts

    sizes, weights = [900, 100], [1.0, 1.0]
    assert epoch_counts(sizes, weights, "proportional") == (900, 100)
    assert epoch_counts(sizes, weights, "equal") == (500, 500)
    assert epoch_counts(sizes, weights, "temperature", temperature=1.0) == (900, 100)
    assert epoch_counts(sizes, weights, "temperature", temperature=2.0) == (750, 250)  # sqrt(900):sqrt(100) = 3:1
    assert epoch_counts(sizes, [1.0, 3.0], "equal") == (300, 900)  # total = 900 + 300
    assert epoch_counts(sizes, weights, "equal", caps=[None, 120]) == (500, 120)
    assert epoch_counts([10, 0], weights, "equal") == (10, 0)


def test_mixture_order_repeats_small_tasks_and_samples_large_ones():
    from multitune.data.mixture import mixture_order

    order = mixture_order([4, 10], [10, 5], seed=3, epoch=0)
    per_example = Counter(order)
    assert sorted(per_example[i] for i in range(4)) == [2, 2, 3, 3]  # 10 = 2 x 4 + 2 drawn
    assert sum(per_example[i] for i in range(4, 14)) == 5 and max(per_example[i] for i in range(4, 14)) == 1
    assert mixture_order([4, 10], [10, 5], 3, 0) == order
    assert mixture_order([4, 10], [10, 5], 3, 1) != order


def test_pinned_order_guards_exact_resume():
    # Resuming a run replays this order (the one the first release computed): change it only on purpose.
    assert epoch_order([3, 2], [1.0, 1.5], seed=0, epoch=0) == [4, 3, 0, 3, 1, 2]
