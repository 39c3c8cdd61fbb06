"""Tests for hungarian.py: fuzzed against scipy.optimize.linear_sum_assignment and brute force.

Run: python -m pytest test_hungarian.py

Costs are compared, not indices: with ties several assignments are optimal and the tie-breaking
is the solver's own. Every result is also checked to be a valid assignment on its own.
"""
import itertools
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa

from hungarian import linear_sum_assignment

SHAPES = [(n, m) for n in range(1, 13) for m in range(1, 13)]
SSFT_SHAPES = [(6, 4), (4, 6)]  # N=6 tags x M=4 traces, and its transpose
KINDS = ["float", "int_ties", "huge", "forbidden"]
EXACT = {"int_ties", "huge"}  # kinds whose every sum is exact in float64: costs must agree exactly


def random_costs(rng, kind, shape, count):
    """(count, n, m) float64 costs of one kind; every matrix has a finite complete matching."""
    n, m = shape
    size = (count, n, m)
    if kind == "float":
        return rng.standard_normal(size) * 10.0 ** rng.integers(-3, 4, (count, 1, 1))
    if kind == "int_ties":  # few distinct values: many optimal assignments
        return rng.integers(0, 3, size).astype(np.float64)
    if kind == "huge":
        # +-2^40 (~1e12) multiples plus small multiples of 1/8: mixed magnitudes whose sums and
        # differences are all exact in float64, so both solvers must agree to the last bit.
        return 2.0 ** 40 * rng.integers(-2, 3, size) + rng.integers(-800, 800, size) / 8
    if kind == "forbidden":
        cost = rng.random(size)
        forbid = rng.random(size) < rng.uniform(0.2, 0.8, (count, 1, 1))
        # Keep one random injective map of the smaller side finite so a matching always exists.
        k, big = min(n, m), max(n, m)
        b = np.arange(count)[:, None]
        small_idx = np.broadcast_to(np.arange(k), (count, k))
        big_idx = np.argsort(rng.random((count, big)), axis=1)[:, :k]
        rows, cols = (small_idx, big_idx) if n <= m else (big_idx, small_idx)
        forbid[b, rows, cols] = False
        cost[forbid] = np.inf
        return cost
    raise ValueError(kind)


def check_valid(cost, rows, cols):
    n, m = cost.shape
    k = min(n, m)
    assert rows.dtype == np.intp and cols.dtype == np.intp
    assert rows.shape == cols.shape == (k,)
    assert np.all(np.diff(rows) > 0), "rows must be strictly ascending (so distinct)"
    assert len(set(cols.tolist())) == k, "columns must be distinct"
    assert k == 0 or (rows.min() >= 0 and rows.max() < n and cols.min() >= 0 and cols.max() < m)


def check_against_scipy(cost, maximize=False, exact=False):
    rows, cols = linear_sum_assignment(cost, maximize=maximize)
    check_valid(cost, rows, cols)
    ours = math.fsum(cost[rows, cols])
    assert math.isfinite(ours)
    ref_rows, ref_cols = scipy_lsa(cost, maximize=maximize)
    ref = math.fsum(cost[ref_rows, ref_cols])
    finite = np.abs(cost[np.isfinite(cost)])
    tol = 0.0 if exact else 1e-12 * min(cost.shape) * finite.max()  # rounding slack only
    assert abs(ours - ref) <= tol, (cost, ours, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_matches_scipy_on_random_matrices(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    count = 0
    for shape in SHAPES + SSFT_SHAPES * 10:  # every shape up to 12x12; 6x4 and 4x6 get 11x as many
        for cost in random_costs(rng, kind, shape, 30):
            check_against_scipy(cost, exact=kind in EXACT)
            count += 1
    assert count == 30 * (len(SHAPES) + 20)  # 4,920 per kind, 19,680 over the four kinds


@pytest.mark.parametrize("kind", KINDS)
def test_maximize_matches_scipy(kind):
    rng = np.random.default_rng(100 + KINDS.index(kind))
    for shape in SHAPES + SSFT_SHAPES:
        for cost in random_costs(rng, kind, shape, 3):
            # maximize forbids -inf rather than +inf, so flip the forbidden entries' sign.
            cost = np.where(np.isposinf(cost), -np.inf, cost)
            check_against_scipy(cost, maximize=True, exact=kind in EXACT)


def brute_force_min(cost):
    """Minimum over all injective maps of the smaller side into the larger (inf if none finite)."""
    if cost.shape[0] > cost.shape[1]:
        cost = cost.T
    n, m = cost.shape
    maps = np.array(list(itertools.permutations(range(m), n)))  # (P, n), at most 6!/0! = 720
    return cost[np.arange(n), maps].sum(axis=1).min()


@pytest.mark.parametrize("kind", KINDS)
def test_matches_brute_force(kind):
    rng = np.random.default_rng(200 + KINDS.index(kind))
    for shape in [(n, m) for n in range(1, 7) for m in range(1, 7)]:
        for cost in random_costs(rng, kind, shape, 12):
            rows, cols = linear_sum_assignment(cost)
            check_valid(cost, rows, cols)
            best = brute_force_min(cost)
            tol = 0.0 if kind in EXACT else 1e-12 * np.abs(cost[np.isfinite(cost)]).max() * 6
            assert abs(math.fsum(cost[rows, cols]) - best) <= tol, (cost, best)


def test_random_feasibility_matches_scipy():
    """Dense random +inf patterns: we must fail exactly when scipy does, and agree otherwise."""
    rng = np.random.default_rng(250)
    outcomes = set()
    for shape in SHAPES:
        cost = rng.random((20, *shape))
        cost[rng.random(cost.shape) < 0.7] = np.inf
        for c in cost:
            try:
                scipy_lsa(c)
            except ValueError:
                assert "infeasible" in same_error(c)
                outcomes.add("infeasible")
            else:
                check_against_scipy(c)
                outcomes.add("feasible")
    assert outcomes == {"feasible", "infeasible"}


def test_known_answer():
    cost = [[4, 1, 3], [2, 0, 5], [3, 2, 2]]
    rows, cols = linear_sum_assignment(cost)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]
    rows, cols = linear_sum_assignment(cost, maximize=True)
    assert np.asarray(cost)[rows, cols].sum() == 11


def test_tall_returns_sorted_rows_and_leaves_rows_unmatched():
    cost = np.array([[5.0, 9], [1, 9], [9, 2], [9, 0]])  # 4 rows, 2 columns
    rows, cols = linear_sum_assignment(cost)
    assert rows.tolist() == [1, 3] and cols.tolist() == [0, 1]


def same_error(cost, maximize=False):
    """Our solver must raise exactly when scipy does, with the same exception type."""
    with pytest.raises(Exception) as ref:
        scipy_lsa(cost, maximize=maximize)
    with pytest.raises(ref.type) as ours:
        linear_sum_assignment(cost, maximize=maximize)
    return str(ours.value)


inf, nan = np.inf, np.nan


@pytest.mark.parametrize("cost", [
    [[1.0, nan]], [[nan]], [[1.0, -inf], [2, 3]], [[nan, inf]], [[-inf, inf], [inf, inf]],
    np.full((6, 4), nan),
])
def test_invalid_entries_raise(cost):
    assert "invalid numeric entries" in same_error(np.array(cost))


@pytest.mark.parametrize("cost", [
    [[inf]],
    [[1.0, inf], [inf, inf]],  # a row with no allowed column
    [[inf, inf, 1], [inf, inf, 2]],  # wide: both rows can only use column 2
    [[inf, inf, 1], [inf, inf, 2]] + [[0, 0, 0]],  # square: Hall's condition fails for rows 0, 1
    np.array([[inf, inf, 1], [inf, inf, 2]]).T.tolist(),  # tall: columns 0, 1 need the same row
    np.hstack([np.ones((6, 3)), np.full((6, 1), inf)]).tolist(),  # 6x4: trace 3 can take no tag
    np.vstack([np.ones((3, 6)), np.full((1, 6), inf)]).tolist(),  # wide: every row must be used
])
def test_infeasible_raises(cost):
    assert "infeasible" in same_error(np.array(cost))


@pytest.mark.parametrize("cost", [
    np.hstack([np.ones((4, 3)), np.full((4, 1), inf), np.ones((4, 2))]),  # wide: unused column
    np.vstack([np.ones((3, 4)), np.full((1, 4), inf), np.ones((2, 4))]),  # tall: unused row
    np.array([[inf, 1.0, inf], [2.0, inf, inf], [inf, inf, 3.0]]),  # exactly one way through
])
def test_forbidden_edges_that_leave_a_matching(cost):
    check_against_scipy(cost)


def test_maximize_inf_semantics():
    assert "invalid numeric entries" in same_error(np.array([[1.0, inf]]), maximize=True)
    assert "invalid numeric entries" in same_error(np.array([[1.0, nan]]), maximize=True)
    assert "infeasible" in same_error(np.array([[-inf, -inf]]), maximize=True)
    check_against_scipy(np.array([[1.0, -inf], [2, 3]]), maximize=True)  # -inf is forbidden
    check_against_scipy(np.array([[1.0, 2, -inf], [-inf, -inf, 0]]), maximize=True)


@pytest.mark.parametrize("shape", [(0, 0), (0, 3), (3, 0), (0, 1)])
@pytest.mark.parametrize("maximize", [False, True])
def test_empty(shape, maximize):
    rows, cols = linear_sum_assignment(np.zeros(shape), maximize=maximize)
    ref_rows, _ = scipy_lsa(np.zeros(shape), maximize=maximize)
    assert rows.shape == cols.shape == ref_rows.shape == (0,)
    assert rows.dtype == cols.dtype == np.intp


@pytest.mark.parametrize("cost", [np.zeros((2, 2, 2)), np.zeros(3), np.zeros(0), np.float64(3.0),
                                  np.zeros((0, 3, 2))])
def test_not_a_matrix_raises(cost):
    assert "2-D" in same_error(cost)


@pytest.mark.parametrize("cost", [np.array([[1, 2]], dtype=object), np.array([["1", "2"]]),
                                  [[1 + 1j]]])
def test_non_real_dtype_raises(cost):
    same_error(cost)


def test_bool_and_int_inputs():
    rng = np.random.default_rng(300)
    for shape in SHAPES[::5] + SSFT_SHAPES:
        for maximize in (False, True):
            check_against_scipy(rng.random(shape) < 0.5, maximize)
            check_against_scipy(rng.integers(-5, 5, shape), maximize)
            check_against_scipy(rng.integers(0, 5, shape).astype(np.uint8), maximize)
            check_against_scipy(rng.random(shape).astype(np.float32), maximize)
    rows, cols = linear_sum_assignment([[True, False], [False, True]])
    assert cols.tolist() == [1, 0]


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 3), (3, 2), (6, 4), (4, 6), (12, 12)])
def test_constant_matrix_gives_identity(shape):
    rows, cols = linear_sum_assignment(np.full(shape, 7.0))
    k = min(shape)
    assert rows.tolist() == cols.tolist() == list(range(k))
    assert [r.tolist() for r in scipy_lsa(np.full(shape, 7.0))] == [rows.tolist(), cols.tolist()]


@pytest.mark.parametrize("maximize", [False, True])
def test_input_not_modified(maximize):
    cost = np.array([[3.0, 1.0], [2.0, 4.0], [0.0, 5.0]])  # tall, so it is also transposed inside
    before = cost.copy()
    linear_sum_assignment(cost, maximize=maximize)
    assert np.array_equal(cost, before)


def test_large_random_square():
    rng = np.random.default_rng(400)
    check_against_scipy(rng.random((80, 80)))
    check_against_scipy(rng.integers(0, 4, (60, 90)).astype(np.float64))
