"""Batched STL robustness: many formulae x many trajectories, on two engines with bitwise-equal results.

`robustness(formulae, trajectories)` lowers the batch to one hash-consed IR (step 1 below) and runs it on
- the fused CPU kernel (`native.py`, `fused.cpp`; the default on the CPU): the whole program on blocks of 16
  trajectories, every live trace in cache, O(1) work per sample for every operator; or
- the torch engine, a `RobustnessPlan` (the default on GPUs, and wherever no C++ compiler is found), which evaluates
  groups of same-kind nodes with a few tensor ops each, on trajectory chunks:

1. Every formula is lowered to a small IR (atom, not, and, or, windowed max F / min G, until) and hash-consed, so
   shared sub-formulae are computed once. Under the reference convention a timed until is rewritten exactly as the
   published code does: `G[0,a] phi & F[a,b] psi & F[a,inf) (phi U psi)` with an *inclusive* unbounded until.
2. IR nodes are grouped by (height, operator kind), heights assigned as late as possible; one group (at most
   `MAX_ROWS` nodes) is evaluated by one short sequence of tensor ops whatever the intervals of its members. Node
   values live in an "arena" of shape (2 + rows*T, N) whose rows are (node, time) slots with the N trajectories
   contiguous; slots 0 and 1 hold +inf and -inf, so a time shift, the end-of-domain mask and the empty-window fill
   of a whole group are one `index_select` with a precomputed index. Arena rows are reused once their last reader
   has run. When rows are long (Tg*N >= `ROW_OPS` values, e.g. at="all" on 1000 trajectories), boolean groups and
   window lookups instead run one op per node on arena/table views: no gathered copies, and the extra dispatches
   cost less than the memory passes they save (results are bitwise the same).
3. Bounded windows use a sparse table (log-doubling: O(log w) passes, then two lookups per sample). The bounded until
   uses the same doubling on the composition of the maps x -> max(A_t, min(B_t, x)) (A=psi, B=phi for the strict
   until; A=min(phi, psi) for the inclusive one), which gives any window in four lookups and never materialises
   (N, T, T) tensors. Windows that reach the end of the trace (unbounded, [a,inf)) are backward scans over t.

Conventions (DESIGN.md "Intervals"): "textbook" equals rtamt's `StlDiscreteTimeOfflineSpecification` (strict until,
windows truncated at the end of the trace, empty window: G=+inf, F/U=-inf; `[a,inf)` is `[a,T-1]`); "reference"
equals the published code: each node is defined on its domain only (a bounded window shortens its child by `b`,
`[a,inf)` by `a`, binary operators take the shorter operand), unbounded operators range to the end of their child's
domain, values are always finite, and samples outside the root's domain are NaN with `at="all"`.

Memory: a chunk of `c` trajectories uses `plan.bytes_per_trajectory() * c` bytes (arena high-water mark plus the
largest group's scratch: (levels+1) * rows * T values, twice for until), in a per-thread buffer kept between calls
(the largest chunk's size; `release_workspace()` frees it). `chunk_size=None` picks `c` to stay under `max_bytes`
(default 256 MiB) whatever N is; e.g. the 1024 published anchors at T=100 need about 2.3 MB per trajectory (chunks
of ~118). The result itself is (B, N) or (B, N, T). Plans are cached per (formulae, T, convention, device, at).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import native
from .formula import Always, And, Atom, Eventually, Formula, Not, Or, Until, as_formulae
from .native import NativePlan

CONVENTIONS = ("reference", "textbook")
ENGINES = ("auto", "native", "torch")
POS, NEG = 0, 1  # arena/workspace slots holding +inf and -inf
MAX_ROWS = 256  # most nodes evaluated by one group op
ROW_OPS = 8192  # from this many values per node row (Tg * N), a group does one op per node on arena views instead
# of gathering copies: fewer memory passes, more (cheap, at that size) op dispatches
_LOCAL = threading.local()  # per-thread workspace buffers, by (device, dtype)


def _log2(n: int) -> int:
    return max(n, 1).bit_length() - 1


# ---------------------------------------------------------------------------------------------------------------
# lowering: Formula -> hash-consed IR. A node is (op, children, params); dh is the reference "domain horizon"


class _IR:
    def __init__(self, convention: str):
        self.convention = convention
        self.nodes: list[tuple] = []  # (op, children, params)
        self.dh: list[int] = []  # samples lost at the end of the trace (reference); 0 under textbook
        self.ids: dict[tuple, int] = {}
        self.memo: dict[tuple[Formula, bool], int] = {}
        self.n_vars = 0  # variables read: 1 + the largest index

    def add(self, op: str, children: tuple[int, ...], params: tuple = ()) -> int:
        if op in ("and", "or"):
            children = tuple(sorted(children))  # min/max and truncation are symmetric
        key = (op, children, params)
        if key not in self.ids:
            self.ids[key] = len(self.nodes)
            self.nodes.append(key)
            self.dh.append(self._dh(op, children, params) if self.convention == "reference" else 0)
        return self.ids[key]

    def _dh(self, op: str, children: tuple[int, ...], params: tuple) -> int:
        h = max((self.dh[c] for c in children), default=0)
        if op in ("F", "G"):
            a, b = params
            h += a if b is None else b
        return h

    def lower(self, f: Formula, neg: bool = False) -> int:
        """IR node of f (of not f with neg=True). Negations are pushed down to atoms and untils, exactly:
        -(x - c) == c - x and -max == min(-.) in floating point, empty-window fills included."""
        if (f, neg) not in self.memo:
            self.memo[f, neg] = self._lower(f, neg)
        return self.memo[f, neg]

    def _lower(self, f: Formula, neg: bool) -> int:
        match f:
            case Atom():
                self.n_vars = max(self.n_vars, f.var + 1)
                return self.add("atom", (), (f.var, float(f.threshold), f.lte != neg))
            case Not():
                return self.lower(f.child, not neg)
            case And() | Or():
                op = "and" if isinstance(f, And) != neg else "or"
                return self.add(op, (self.lower(f.left, neg), self.lower(f.right, neg)))
            case Always() | Eventually():
                a, b = (0, None) if f.interval is None else (f.interval.start, f.interval.end)
                return self.add("G" if isinstance(f, Always) != neg else "F", (self.lower(f.child, neg),), (a, b))
            case Until():
                u = self._until(f)
                return self.add("not", (u,)) if neg else u
        raise TypeError(f"not a formula node: {f!r}")

    def needs(self, roots: list[int], T: int, at: str) -> list[int]:
        """The leading samples of every node that some reader uses: T for the roots with at="all", else 1; a window
        [a, b] needs a+w-1 more samples of its child (w = b-a+1, both clipped to the trace), or all T when it
        reaches the end of the trace."""
        need = [0] * len(self.nodes)
        for r in roots:
            need[r] = T if at == "all" else 1
        for i in range(len(self.nodes) - 1, -1, -1):  # parents come after their children
            op, children, params = self.nodes[i]
            m = need[i]
            if op in ("F", "G", "U"):
                a = min(params[0], T)
                w = max((T - 1 if params[1] is None else min(params[1], T - 1)) - a + 1, 1)
                m = T if a + w >= T else min(T, m + a + w - 1)
            for c in children:
                need[c] = max(need[c], m)
        return need

    def _until(self, f: Until) -> int:
        l, r = self.lower(f.left), self.lower(f.right)
        a, b = (0, None) if f.interval is None else (f.interval.start, f.interval.end)
        if self.convention == "textbook":
            return self.add("U", (l, r), (a, b))
        u = self.add("U", (l, r), (0, None))  # the reference's inclusive unbounded until
        if f.interval is None:
            return u
        g = self.add("G", (l,), (0, a))
        head = self.add("and", (g, self.add("F", (r,), (a, b))))
        return self.add("and", (head, self.add("F", (u,), (a, None))))


# ---------------------------------------------------------------------------------------------------------------
# the compiled plan


@dataclass
class _Group:
    op: str
    suffix: bool  # windowed op whose window always reaches the end of the trace: a backward scan
    shifted: bool  # until with a > 0: a min with G[0,a-1] phi and a shift by a after the window
    T: int
    Tg: int  # samples of the output that are needed (the rest of the arena rows is left as is)
    Tt: int  # samples of the table / input window
    start: int  # first arena node of the group's output (outputs are contiguous)
    rows: int
    idx: dict[str, torch.Tensor]  # precomputed slot indices
    levels: list[int]  # rows that need doubling level j+1 (a prefix: rows are sorted by need)
    extra: dict  # atoms: row range per variable, signs and biases

    @property
    def scratch(self) -> int:
        """Workspace slots (rows of N values) the group needs beyond the arena."""
        n, K = self.rows * self.T, len(self.levels) + 1
        return {"F": 2 + K * n + 2 * n, "G": 2 + K * n + 2 * n, "U": 2 + (2 * K + 1) * n + 6 * n}.get(self.op, 2 * n)


class RobustnessPlan:
    """A batch of formulae compiled for trajectories of `n_points` samples on one device; reusable across chunks.

    `plan(x)` with x (N, n_vars, T) returns (B, N) robustness at t=0 (at="start"), or (B, N, T) (at="all").
    With at="start" every node is computed only on the leading samples its readers need.
    """

    def __init__(self, formulae: Sequence[Formula], n_points: int, convention: str, device: torch.device | str,
                 at: str = "start"):
        T, self.T, self.convention, self.device, self.at = n_points, n_points, convention, torch.device(device), at
        ir = _IR(convention)
        roots = [ir.lower(f) for f in formulae]
        self.n_vars = ir.n_vars
        need, late = self._schedule(ir, roots)
        groups: dict[tuple[int, str, bool, bool], list[int]] = {}
        for i, node in enumerate(ir.nodes):
            groups.setdefault((late[i], *self._kind(node)), []).append(i)
        order = []
        for key in sorted(groups):
            members = groups[key]
            if key[1] in ("F", "G", "U"):  # rows by needed table level, descending
                members = sorted(members, key=lambda i: -self._rows(ir.nodes[i])[-1])
            elif key[1] == "atom":  # rows by (variable, direction): one op per pair
                members = sorted(members, key=lambda i: ir.nodes[i][2][::2])
            for r in range(0, len(members), MAX_ROWS):  # bounded group size bounds the scratch
                order.append((key[1:], members[r : r + MAX_ROWS]))
        pos, self.n_nodes = self._allocate(order, ir, roots)
        slot = [2 + p * T for p in pos]  # arena slot of (node, t=0)
        self.groups = [self._group(*kind, members, ir, pos, slot, max(need[i] for i in members))
                       for kind, members in order]
        self.scratch = max((g.scratch for g in self.groups), default=0)
        self.roots = torch.tensor([pos[r] for r in roots], device=self.device)
        self.root_slots = torch.tensor([slot[r] for r in roots], device=self.device)
        self.root_len = torch.tensor([T - ir.dh[r] for r in roots], device=self.device)

    def _schedule(self, ir: _IR, roots: list[int]) -> tuple[list[int], list[int]]:
        """(need, height) of every node: the leading samples some reader uses (`_IR.needs`), and the step it runs
        at, as late as possible (just before its first reader, so it stays in the arena briefly)."""
        n, need = len(ir.nodes), ir.needs(roots, self.T, self.at)
        height = [0] * n  # longest path from a leaf
        for i, (_, ch, _) in enumerate(ir.nodes):
            height[i] = 1 + max((height[c] for c in ch), default=-1)
        late = [max(height, default=0)] * n
        for i in range(n - 1, -1, -1):
            for c in ir.nodes[i][1]:
                late[c] = min(late[c], late[i] - 1)
        return need, late

    @staticmethod
    def _allocate(order: list, ir: _IR, roots: list[int]) -> tuple[list[int], int]:
        """Arena row of every node: each group's outputs are one contiguous block, and a row is reused once the
        last group reading it has run (first fit). Returns (positions, arena rows)."""
        group_of = {i: gi for gi, (_, members) in enumerate(order) for i in members}
        last = [-1] * len(ir.nodes)  # index of the last group reading each node; roots live to the end
        for r in roots:
            last[r] = len(order)
        for i, (_, ch, _) in enumerate(ir.nodes):
            for c in ch:
                last[c] = max(last[c], group_of[i])
        expiring: dict[int, list[int]] = {}
        for i, gi in enumerate(last):
            expiring.setdefault(gi, []).append(i)
        free: list[list[int]] = []  # sorted [start, length] runs of free rows
        pos, top = [0] * len(ir.nodes), 0
        for gi, (_, members) in enumerate(order):
            for i in expiring.get(gi - 1, []):  # read for the last time by the previous group
                free.append([pos[i], 1])
            free.sort()
            merged: list[list[int]] = []
            for run in free:
                if merged and merged[-1][0] + merged[-1][1] == run[0]:
                    merged[-1][1] += run[1]
                else:
                    merged.append(run)
            free = merged
            n = len(members)
            run = next((r for r in free if r[1] >= n), None)
            if run is None:
                start, top = top, top + n
            else:
                start, run[0], run[1] = run[0], run[0] + n, run[1] - n
                free = [r for r in free if r[1] > 0]
            for k, i in enumerate(members):
                pos[i] = start + k
        return pos, max(top, 1)

    def _kind(self, node: tuple) -> tuple[str, bool, bool]:
        """(op, suffix, shifted): nodes of one height and kind form one group."""
        op = node[0]
        if op not in ("F", "G", "U"):
            return op, False, False
        a, w, *_ = self._rows(node)
        return op, a + w >= self.T, op == "U" and a > 0

    def _rows(self, node: tuple) -> tuple[int, int, int, int, int]:
        """(a, w, k, i, need): window start and width clipped to the trace (an empty window keeps width 1 and reads
        fill slots only), the table level k of the window lookup, the level i of the until's G[0,a-1] phi lookup,
        and the highest table level the node needs (suffix windows are scans and need no table)."""
        op, _, (a, b) = node
        a = min(a, self.T)
        b = self.T - 1 if b is None else min(b, self.T - 1)
        w = max(b - a + 1, 1)
        k = 0 if a + w >= self.T else _log2(w)
        i = _log2(a) if op == "U" else 0
        return a, w, k, i, max(k, i)

    def _group(self, op: str, suffix: bool, shifted: bool, members: list[int], ir: _IR, pos: list[int],
               slot: list[int], Tg: int) -> _Group:
        T, dev, rows = self.T, self.device, len(members)
        idx, levels, extra = {}, [], {}
        nodes = [ir.nodes[i] for i in members]
        Tt = Tg
        if op == "atom":
            keys = [p[::2] for _, _, p in nodes]  # (var, lte)
            runs = [(*key, keys.index(key), rows - keys[::-1].index(key)) for key in sorted(set(keys))]
            extra = {"runs": runs, "thr": torch.tensor([p[1] for _, _, p in nodes], dtype=torch.float64).view(-1, 1, 1)}
        elif op in ("not", "and", "or"):
            for k in range(len(nodes[0][1])):
                idx[f"c{k}"] = torch.tensor([pos[ch[k]] for _, ch, _ in nodes])
            extra = {"children": [[pos[c] for c in ch] for _, ch, _ in nodes]}
        else:
            a, w, k, i, need = (torch.tensor(c).view(-1, 1) for c in zip(*(self._rows(nd) for nd in nodes)))
            levels = [int((need > j).sum()) for j in range(int(need.max()))]
            end = torch.tensor([T - max(ir.dh[c] for c in ch) for _, ch, _ in nodes]).view(-1, 1)  # domain of the input
            g = torch.arange(rows).view(-1, 1)
            K = len(levels) + 1  # table levels 0..K-1
            p2 = lambda e: torch.ones_like(e) << e  # noqa: E731
            # outputs t < Tg read the table up to Tg-1 + a+w-1; past that (or the end of the trace) nothing is read
            Tt = T if suffix else min(T, Tg + int((a + w).max()) - 1)
            t = torch.arange(Tg)

            def fetch(child: int, shift, fill: int):  # (rows*Tt,) arena slots of child[t+shift], fill past its end
                s = torch.arange(Tt) + shift
                base = torch.tensor([slot[ch[child]] for _, ch, _ in nodes]).view(-1, 1)
                return torch.where(s < end, base + s, fill).flatten()

            if op in ("F", "G"):  # table (K, rows, T): extremum over [t, t+2^lev) of the shifted child
                idx["fetch"] = fetch(0, a, NEG if op == "F" else POS)
                tab = lambda lev, s: 2 + (lev * rows + g) * Tt + torch.clamp(s, max=Tt - 1)  # noqa: E731
                if not suffix:
                    idx["final"] = torch.cat([tab(k, t), tab(k, t + w - p2(k))]).flatten()
                    extra = {"lookups": list(zip(k.flatten().tolist(), (w - p2(k)).flatten().tolist()))}  # (k, shift)
            else:  # until: table (K, 2, rows, T) of compositions (A, B), then V(u) for the window, then shift by a
                idx["phi"], idx["psi"] = fetch(0, 0, POS), fetch(1, 0, NEG)
                tab = lambda lev, ab, s: 2 + ((lev * 2 + ab) * rows + g) * Tt + torch.clamp(s, max=Tt - 1)  # noqa: E731
                m1 = [tab(i, 1, t), tab(i, 1, t + a - p2(i))]  # min phi over [t, t+a-1] (a > 0)
                if suffix and shifted:  # V is a scan, then min with m1 and shift by a
                    v_at = torch.where(t + a < T, 2 + K * 2 * rows * Tt + g * T + torch.clamp(t + a, max=T - 1), NEG)
                    idx["final"] = torch.cat([*m1, v_at]).flatten()
                elif not suffix:  # V(u) from four lookups at u = t + a (-inf past the trace), min with m1 if a > 0
                    u = t + a
                    L = w - p2(k)
                    j = torch.tensor([_log2(x) for x in L.flatten().tolist()]).view(-1, 1)
                    has_l, inside = L > 0, u < T
                    t1 = torch.where(inside, tab(k, 0, u), NEG)
                    t2 = torch.where(has_l & inside, tab(j, 1, u), POS)
                    t3 = torch.where(has_l & inside, tab(j, 1, u + L - p2(j)), POS)
                    t4 = torch.where(has_l & inside, tab(k, 0, u + L), NEG)
                    idx["final"] = torch.cat([t1, t2, t3, t4, *(m1 if shifted else [])]).flatten()
                    lookups = []  # the same per row: (level, A/B, shift, valid samples, fill past them)
                    for a_, k_, i_, L_, j_ in zip(*(v.flatten().tolist() for v in (a, k, i, L, j))):
                        inside = max(0, min(Tg, T - a_))
                        with_l = inside if L_ > 0 else 0
                        row = [(k_, 0, a_, inside, NEG), (j_, 1, a_, with_l, POS),
                               (j_, 1, a_ + L_ - (1 << j_), with_l, POS), (k_, 0, a_ + L_, with_l, NEG)]
                        m1_ = [(i_, 1, 0, Tg, POS), (i_, 1, a_ - (1 << i_), Tg, POS)] if shifted else []
                        lookups.append(row + m1_)
                    extra = {"lookups": lookups}
        idx = {name: v.to(dev) for name, v in idx.items()}
        extra = {name: v.to(dev) if isinstance(v, torch.Tensor) else v for name, v in extra.items()}
        return _Group(op, suffix, shifted, T, Tg, Tt, pos[members[0]], rows, idx, levels, extra)

    def bytes_per_trajectory(self, itemsize: int = 4) -> int:
        """Workspace bytes per trajectory of a chunk: the arena plus the largest group's scratch."""
        return (2 + self.n_nodes * self.T + self.scratch) * itemsize

    def _workspace(self, N: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(arena, scratch) views of a per-thread buffer kept between calls (fresh large allocations cost page
        faults); it grows to the largest chunk seen and is shared by all plans."""
        size = (2 + self.n_nodes * self.T + self.scratch) * N
        buffers = _LOCAL.__dict__.setdefault("buffers", {})
        b = buffers.get((like.device, like.dtype))
        if b is None or b.numel() < size:
            b = buffers[like.device, like.dtype] = like.new_empty(size)
        arena = b[: (2 + self.n_nodes * self.T) * N].view(-1, N)
        return arena, b[arena.numel() : size].view(-1, N)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, n_vars, T) -> (B, N) at t=0 (at="start"), or (B, N, T) (at="all")."""
        T, N = self.T, x.shape[0]
        xt = x.permute(1, 2, 0).contiguous()  # (n_vars, T, N)
        arena, ws = self._workspace(N, x)
        arena[:2] = torch.tensor([[float("inf")], [float("-inf")]], dtype=x.dtype, device=x.device)
        nodes = arena[2:].view(self.n_nodes, T, N)
        for g in self.groups:
            out = nodes[g.start : g.start + g.rows]  # (rows, T, N); samples t < g.Tg are computed
            tmp, head, part = ws[: g.rows * g.Tg * 2].view(2, g.rows, g.Tg, N), out[:, : g.Tg], nodes[:, : g.Tg]
            if g.op == "atom":
                thr = g.extra["thr"].to(x.dtype)
                for v, lte, r0, r1 in g.extra["runs"]:  # c - x_v (x_v <= c) or x_v - c, broadcast over rows
                    xv, c = xt[v, : g.Tg], thr[r0:r1]
                    torch.sub(*((c, xv) if lte else (xv, c)), out=head[r0:r1])
            elif g.op in ("not", "and", "or"):
                op = {"not": torch.neg, "and": torch.minimum, "or": torch.maximum}[g.op]
                if g.Tg * N >= ROW_OPS:
                    for r, children in enumerate(g.extra["children"]):
                        op(*(part[c] for c in children), out=head[r])
                else:
                    op(*(torch.index_select(part, 0, g.idx[f"c{k}"], out=tmp[k]) for k in range(len(g.idx))), out=head)
            elif g.op in ("F", "G"):
                self._window_group(g, arena, ws, out)
            else:
                self._until_group(g, arena, ws, out)
        if self.at == "start":
            return arena.index_select(0, self.root_slots)  # (B, N)
        return nodes.index_select(0, self.roots).permute(0, 2, 1)  # (B, N, T)

    def _window_group(self, g: _Group, arena: torch.Tensor, ws: torch.Tensor, out: torch.Tensor) -> None:
        T, N, rows, K = g.Tt, arena.shape[1], g.rows, len(g.levels) + 1
        op = torch.maximum if g.op == "F" else torch.minimum
        ws[:2] = arena[:2]
        tab = ws[2 : 2 + K * rows * T].view(K, rows, T, N)
        torch.index_select(arena, 0, g.idx["fetch"], out=tab[0].view(-1, N))
        if g.suffix:  # backward scan: out(t) = op(child(t+a), out(t+1))
            c, o = tab[0].unbind(1), out.unbind(1)  # T views (rows, N) each, made in one call
            o[T - 1].copy_(c[T - 1])
            for u in range(T - 2, -1, -1):
                op(c[u], o[u + 1], out=o[u])
            return
        for lev, n in enumerate(g.levels):
            d, src, dst = 1 << lev, tab[lev, :n], tab[lev + 1, :n]
            if d < T:
                op(src[:, : T - d], src[:, d:], out=dst[:, : T - d])
            dst[:, max(T - d, 0) :] = src[:, max(T - d, 0) :]
        if g.Tg * N >= ROW_OPS:  # out(t) = op(tab_k(t), tab_k(min(t + shift, T-1)))
            for r, (k, s) in enumerate(g.extra["lookups"]):
                L = min(g.Tg, T - s)
                op(tab[k, r, :L], tab[k, r, s : s + L], out=out[r, :L])
                if L < g.Tg:
                    op(tab[k, r, L : g.Tg], tab[k, r, T - 1 :], out=out[r, L : g.Tg])
            return
        both = ws[2 + K * rows * T : 2 + K * rows * T + 2 * rows * g.Tg]
        both = torch.index_select(ws[: 2 + K * rows * T], 0, g.idx["final"], out=both).view(2, rows, g.Tg, N)
        op(both[0], both[1], out=out[:, : g.Tg])

    def _until_group(self, g: _Group, arena: torch.Tensor, ws: torch.Tensor, out: torch.Tensor) -> None:
        T, N, rows, K = g.Tt, arena.shape[1], g.rows, len(g.levels) + 1
        ws[:2] = arena[:2]
        tab = ws[2 : 2 + 2 * K * rows * T].view(K, 2, rows, T, N)  # (A, B) of the composition over [t, t+2^lev)
        torch.index_select(arena, 0, g.idx["phi"], out=tab[0, 1].view(-1, N))
        torch.index_select(arena, 0, g.idx["psi"], out=tab[0, 0].view(-1, N))
        if self.convention == "reference":  # inclusive until: A_t = min(phi, psi)
            torch.minimum(tab[0, 0], tab[0, 1], out=tab[0, 0])
        for lev, n in enumerate(g.levels):
            d, src, dst = 1 << lev, tab[lev, :, :n], tab[lev + 1, :, :n]
            if d < T:
                A, B = src[0], src[1]
                tmp = ws[2 + (2 * K + 1) * rows * T : 2 + (2 * K + 2) * rows * T].view(rows, T, N)[:n, : T - d]
                torch.maximum(A[:, : T - d], torch.minimum(B[:, : T - d], A[:, d:], out=tmp), out=dst[0, :, : T - d])
                torch.minimum(B[:, : T - d], B[:, d:], out=dst[1, :, : T - d])
            dst[:, :, max(T - d, 0) :] = src[:, :, max(T - d, 0) :]
        src, tmp = ws[: 2 + (2 * K + 1) * rows * T], ws[2 + (2 * K + 1) * rows * T :]  # fills, table, V; temporaries
        if g.suffix:  # backward scan V(u) = max(A_u, min(B_u, V(u+1))) = clamp(V(u+1), A_u, max(A_u, B_u))
            v = src[2 + 2 * K * rows * T :].view(rows, T, N) if g.shifted else out
            A, B = tab[0, 0], tab[0, 1]
            if self.convention == "textbook":  # strict: A = psi may exceed B = phi
                B = torch.maximum(A, B, out=tmp[: rows * T].view_as(A))
            v, A, B = v.unbind(1), A.unbind(1), B.unbind(1)
            v[T - 1].copy_(A[T - 1])
            for u in range(T - 2, -1, -1):
                torch.clamp(v[u + 1], min=A[u], max=B[u], out=v[u])
            if g.shifted:
                f = torch.index_select(src, 0, g.idx["final"], out=tmp[: 3 * rows * g.Tg]).view(3, rows, g.Tg, N)
                torch.minimum(torch.minimum(f[0], f[1], out=f[0]), f[2], out=out[:, : g.Tg])
            return
        if g.Tg * N < ROW_OPS:
            n = 6 if g.shifted else 4
            f = torch.index_select(src, 0, g.idx["final"], out=tmp[: n * rows * g.Tg]).view(n, rows, g.Tg, N)
            self._until_final(f, f[1], f[-1], out[:, : g.Tg])
            return
        buf = tmp[: 2 * g.Tg].view(2, g.Tg, N)
        for r, lookups in enumerate(g.extra["lookups"]):  # per row, on table views over segments of t where every
            cuts = {0, g.Tg} | {c for _, _, s, valid, _ in lookups for c in (valid, T - s) if 0 < c < g.Tg}
            cuts = sorted(cuts)  # lookup is a plain slice, its clamped last sample or its fill
            for t0, t1 in zip(cuts, cuts[1:]):
                f = [(src[fill : fill + 1] if t0 >= valid else tab[lev, ab, r, T - 1 :] if t0 + s >= T
                      else tab[lev, ab, r, t0 + s : t1 + s]).expand(t1 - t0, N) for lev, ab, s, valid, fill in lookups]
                self._until_final(f, buf[0, : t1 - t0], buf[1, : t1 - t0], out[r, t0:t1])

    @staticmethod
    def _until_final(f, v: torch.Tensor, m: torch.Tensor, out: torch.Tensor) -> None:
        """out = max(f0, min(f1, f2, f3)), then min with f4, f5 (G[0,a-1] phi) if given; v, m: scratch."""
        v = torch.minimum(torch.minimum(f[1], f[2], out=v), f[3], out=v)
        if len(f) == 4:
            torch.maximum(f[0], v, out=out)
            return
        torch.minimum(torch.minimum(f[4], f[5], out=m), torch.maximum(f[0], v, out=v), out=out)


def release_workspace() -> None:
    """Free this thread's cached workspace buffers (they are otherwise kept for the next call)."""
    _LOCAL.__dict__.pop("buffers", None)


@functools.lru_cache(maxsize=8)
def compile_plan(formulae: tuple[Formula, ...], n_points: int, convention: str = "reference", device: str = "cpu",
                 at: str = "start", engine: str = "auto") -> RobustnessPlan | NativePlan:
    """The (cached) plan for a tuple of formulae; `robustness` calls this, callers may reuse it directly
    (`plan(x)` on a chunk x (N, n_vars, n_points) of the same dtype/device family; with at="all" and the reference
    convention, samples past a root's domain (t >= plan.root_len) are left as computed: `robustness` NaNs them).
    engine: "native" (the fused CPU kernel of native.py), "torch" (this module's plan; any device) or "auto" (native
    on the CPU when the kernel builds, else torch)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if convention == "reference":
        for f in formulae:
            if f.time_horizon >= n_points:
                T = n_points
                raise ValueError(f"formula {f} has time horizon {f.time_horizon} but the trajectories have T={T} "
                                 f"samples: the reference convention needs horizon <= T-1 = {T - 1}")
    cpu = torch.device(device).type == "cpu"
    if engine == "auto":
        engine = "native" if cpu and native.library() is not None else "torch"
    if engine == "torch":
        return RobustnessPlan(formulae, n_points, convention, device, at)
    if not cpu:
        raise ValueError(f"engine='native' runs on the CPU only, not on {device}; use engine='torch' or 'auto'")
    if native.library() is None:
        raise RuntimeError("engine='native': the fused kernel could not be built here (see the warning); "
                           "use engine='torch' or 'auto'")
    ir = _IR(convention)
    roots = [ir.lower(f) for f in formulae]
    return NativePlan(ir, roots, ir.needs(roots, n_points, at), n_points, at)


def robustness(formulae: Formula | str | Sequence[Formula | str], trajectories: torch.Tensor, *,
               convention: str = "reference", at: str = "start", chunk_size: int | None = None,
               max_bytes: int = 256 << 20, engine: str = "auto") -> torch.Tensor:
    """Quantitative semantics of every formula on every trajectory.

    formulae: Formula | str | sequence of them (strings in the reference dialect); trajectories: (N, n_vars, T).
    Returns (B, N) at t=0 (at="start") or (B, N, T) (at="all"), float64 if the input is float64 else float32, on
    the input's device. Under "reference", a formula needs `time_horizon < T` (ValueError otherwise) and samples
    past the root's domain are NaN; under "textbook" values may be +-inf (empty windows, as rtamt).
    engine: "auto" runs the fused CPU kernel (native.py) on CPU input without NaN, else the torch engine; "native"
    and "torch" force one (both give bitwise-equal values; "native" raises `NaNInputError` on NaN input). The torch
    engine processes trajectories `chunk_size` at a time (default: as many as fit in `max_bytes` of workspace); the
    native one needs a few traces per thread whatever N is.
    Not differentiable (the result carries no gradient); for soft/differentiable STL use a dedicated library.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; expected one of {CONVENTIONS}")
    if at not in ("start", "all"):
        raise ValueError(f"at must be 'start' or 'all', got {at!r}")
    fs = tuple(as_formulae(formulae))
    if not isinstance(trajectories, torch.Tensor) or trajectories.dim() != 3:
        raise ValueError("trajectories must be a tensor of shape (N, n_vars, T)")
    N, n_vars, T = trajectories.shape
    if T == 0:
        raise ValueError("trajectories of shape (N, n_vars, 0) have no sample to evaluate")
    x = trajectories.detach().to(torch.float64 if trajectories.dtype == torch.float64 else torch.float32)
    plan = compile_plan(fs, T, convention, str(x.device), at, engine)  # checks the horizons (once per batch)
    if plan.n_vars > n_vars:
        f = next(f for f in fs if f.variables and max(f.variables) >= n_vars)
        raise ValueError(f"formula {f} reads x_{max(f.variables)} but the trajectories have {n_vars} variables")
    if len(fs) == 0 or N == 0:
        return x.new_empty((len(fs), N) if at == "start" else (len(fs), N, T))
    try:
        res = _run(plan, x, chunk_size, max_bytes)
    except native.NaNInputError:
        if engine == "native":
            raise
        plan = compile_plan(fs, T, convention, str(x.device), at, "torch")
        res = _run(plan, x, chunk_size, max_bytes)
    if at == "all" and convention == "reference":
        outside = torch.arange(T, device=x.device) >= plan.root_len.to(x.device).view(-1, 1, 1)
        res = res.masked_fill(outside, float("nan"))  # past each root's domain
    return res


def _run(plan: RobustnessPlan | NativePlan, x: torch.Tensor, chunk_size: int | None, max_bytes: int) -> torch.Tensor:
    if chunk_size is None:
        chunk_size = max(1, max_bytes // plan.bytes_per_trajectory(x.element_size()))
    with torch.no_grad():
        if x.shape[0] <= chunk_size:
            return plan(x)
        return torch.cat([plan(x[i : i + chunk_size]) for i in range(0, x.shape[0], chunk_size)], dim=1)


def satisfaction(formulae: Formula | str | Sequence[Formula | str], trajectories: torch.Tensor, *,
                 convention: str = "reference", at: str = "start", **kwargs) -> torch.Tensor:
    """Boolean semantics as `robustness > 0` (robustness exactly 0 and NaN count as not satisfied)."""
    return robustness(formulae, trajectories, convention=convention, at=at, **kwargs) > 0
