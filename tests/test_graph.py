"""The task graph: dependencies, cycles, and how ready tasks are handed out (hand-built graphs)."""

import pytest

from ticketlab.run.graph import CycleError, Graph, Task


def chain_graph():
    # per seed: a -> b -> c ; d depends on b (a control beside the next level)
    tasks = []
    for s in (0, 1):
        tasks += [Task("e", ("a", s), (), "g"), Task("e", ("b", s), (("e", ("a", s)),), "g"),
                  Task("e", ("c", s), (("e", ("b", s)),), "g"), Task("e", ("d", s), (("e", ("b", s)),), "g")]
    return Graph(tasks)


def test_cycle_is_refused():
    with pytest.raises(CycleError, match="cycle"):
        Graph([Task("e", 1, (("e", 2),)), Task("e", 2, (("e", 3),)), Task("e", 3, (("e", 1),))])


def test_unknown_dependency_is_refused():
    with pytest.raises(CycleError, match="unknown task"):
        Graph([Task("e", 1, (("e", 9),))])


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="same id"):
        Graph([Task("e", 1), Task("e", 1)])


def test_only_ready_tasks_go_out_and_order_follows_dependencies():
    g = chain_graph()
    order = []
    while not g.finished:
        batch = g.take(batch=8)
        assert batch, "a task graph without cycles always has a ready task while unfinished"
        for t in batch:
            assert all(d in g.done for d in t.deps)
        for t in batch:
            g.finish(t.id)
            order.append(t.key)
    assert len(order) == 8
    for s in (0, 1):
        assert order.index(("a", s)) < order.index(("b", s)) < order.index(("c", s))
        assert order.index(("b", s)) < order.index(("d", s))


def test_take_spreads_a_group_over_idle_workers_and_respects_the_batch_limit():
    g = Graph([Task("e", i, (), "g") for i in range(10)])
    assert len(g.take(batch=8, idle=2)) == 5          # half for each idle worker
    assert len(g.take(batch=3, idle=1)) == 3          # capped by the batch size
    assert len(g.take(batch=8, idle=1)) == 2          # what is left
    assert g.take(batch=8) == []


def test_ungrouped_tasks_go_alone_and_groups_do_not_mix():
    g = Graph([Task("e", 1, (), None), Task("e", 2, (), None), Task("e", 3, (), "x"), Task("e", 4, (), "y")])
    assert [t.key for t in g.take(batch=8)] == [1]
    assert [t.key for t in g.take(batch=8)] == [2]
    assert [t.key for t in g.take(batch=8)] == [3]
    assert [t.key for t in g.take(batch=8)] == [4]


def test_same_group_of_two_experiments_is_not_stacked_together():
    g = Graph([Task("a", 1, (), "g"), Task("b", 1, (), "g")])
    assert len(g.take(batch=8)) == 1


def test_requeued_tasks_come_back_first():
    g = Graph([Task("e", i, (), None) for i in range(3)])
    first = g.take(batch=1)
    g.requeue(first)
    assert g.take(batch=1)[0].key == first[0].key


def test_width_is_the_widest_dependency_layer():
    assert chain_graph().width() == 4   # a0 a1 | b0 b1 | c0 c1 d0 d1
    assert Graph([Task("e", i) for i in range(5)]).width() == 5
