"""Minimum-cost rectangular linear assignment ("Hungarian algorithm") in plain numpy.

Problem. Given an n x m cost matrix C, with k = min(n, m), pick k distinct rows and k distinct
columns paired one to one so that the sum of C over the pairs is minimal. With n <= m this is
min over injective maps s: rows -> columns of sum_i C[i, s(i)]; with n > m every column gets its
own row instead. SSFT uses it to give each of M traces its own forking tag out of N >= M, with
C[i, j] the loss of trace j under tag i.

Algorithm. Shortest augmenting paths with dual potentials (Jonker-Volgenant; the rectangular form
follows D.F. Crouse, "On implementing 2D rectangular assignment algorithms", IEEE TAES 2016, the
method scipy uses). Rows are assigned one at a time. Potentials u (rows) and v (columns) keep every
reduced cost C[i, j] - u[i] - v[j] >= 0, and 0 on matched pairs. To add a row we run Dijkstra
on reduced costs from it: alternately step to the cheapest unscanned column and, if that column is
taken, on to the row that holds it, until we reach a free column; flipping the pairs along that path
adds the row to the matching. Updating u and v by the path distances keeps the invariants, so after
the last row the matching and (u, v) satisfy complementary slackness for the LP
    min sum C x  s.t.  each row used once, each column at most once
whose dual is max sum u + sum v with u[i] + v[j] <= C[i, j] and v <= 0 (v only ever decreases, and
only on columns that are then matched for good, so unmatched columns keep v = 0): the matching is
optimal. Each of the k Dijkstra runs has at most k steps over m columns, vectorised with numpy:
O(k^2 m) time, O(n m) memory.

Semantics (those of scipy.optimize.linear_sum_assignment):
- linear_sum_assignment(cost, maximize=False) -> (row_ind, col_ind), np.intp arrays of length
  min(n, m), row_ind strictly ascending; the optimum is sum(cost[row_ind, col_ind]).
- Any real dtype (bool and int included) is read as float64; input that is not 2-D -> ValueError,
  input that does not cast safely to float64 (object, str, complex) -> TypeError.
- +inf is a forbidden pair. NaN or -inf -> ValueError. maximize=True negates first, so there -inf
  is forbidden and +inf invalid. No complete matching of the smaller side avoiding forbidden pairs
  -> ValueError("cost matrix is infeasible"). Empty input -> two empty arrays.
- Ties go to the lowest free column, so a constant matrix gives the identity pairing.

Run:  python -m pytest test_hungarian.py     (fuzzed against scipy and brute force)
      python bench/bench_hungarian.py        (speed against scipy)
"""
import numpy as np


def linear_sum_assignment(cost, maximize=False):
    cost = np.asarray(cost)
    if cost.ndim != 2:
        raise ValueError(f"expected a matrix (2-D array), got a {cost.ndim} array")
    cost = cost.astype(np.float64, casting="safe")  # a copy: the caller's array stays untouched
    if maximize:
        cost = -cost
    if np.isnan(cost).any() or np.isneginf(cost).any():
        raise ValueError("matrix contains invalid numeric entries")
    n, m = cost.shape
    if n == 0 or m == 0:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    # The solver assigns every row, so it needs rows <= columns; a tall matrix is solved transposed.
    tall = n > m
    col4row = _solve(np.ascontiguousarray(cost.T if tall else cost))
    if not tall:
        return np.arange(n, dtype=np.intp), col4row
    order = np.argsort(col4row)  # transposed rows are our columns; report by ascending row
    return col4row[order], order.astype(np.intp)


def _solve(c):
    """c: (n, m) float64 with n <= m, entries finite or +inf. Returns col4row (n,) np.intp."""
    n, m = c.shape
    u, v = np.zeros(n), np.zeros(m)
    col4row = np.full(n, -1, np.intp)
    row4col = np.full(m, -1, np.intp)
    for cur in range(n):
        dist = np.full(m, np.inf)  # shortest reduced-cost distance from row `cur` to each column
        pred = np.full(m, -1, np.intp)  # row from which each column was last reached
        todo = np.ones(m, bool)  # columns not yet scanned (their dist is not yet final)
        scanned = []
        i, d = cur, 0.0
        while True:
            # Relax the edges of row i. Row `cur` may have negative reduced costs (u[cur] is still
            # 0), which is harmless: they are relaxed first, and every later row's are >= 0.
            r = d + c[i] - u[i] - v
            better = todo & (r < dist)
            dist[better] = r[better]
            pred[better] = i
            open_dist = np.where(todo, dist, np.inf)
            j = int(open_dist.argmin())
            d = open_dist[j]
            if d == np.inf:  # no finite augmenting path: rows 0..cur cannot all be matched
                raise ValueError("cost matrix is infeasible")
            if row4col[j] >= 0:
                # Among equally short columns take a free one: the path ends now instead of growing
                # through ties, which integer costs are full of.
                free = np.flatnonzero((open_dist == d) & (row4col < 0))
                if free.size:
                    j = int(free[0])
            scanned.append(j)
            todo[j] = False
            if row4col[j] < 0:
                break
            i = row4col[j]
        # Shift the duals by the Dijkstra distances: scanned columns (and the rows matched to
        # them) move by d - dist >= 0, which keeps reduced costs >= 0 and zeroes the new path's.
        sc = np.array(scanned)
        delta = d - dist[sc]
        v[sc] -= delta
        u[row4col[sc[:-1]]] += delta[:-1]  # the last scanned column is the free end: no row
        u[cur] += d
        # Flip the path: each column on it takes the row it was reached from, back to row `cur`.
        j = scanned[-1]
        while True:
            i = pred[j]
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == cur:
                break
    return col4row
