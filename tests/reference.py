"""Slow, obviously-correct NumPy reference of every moeroute op: plain loops over tokens, slots, experts."""

import math

import numpy as np

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)


def compute_dtype(dtype):
    """Scores and weights are computed in float64 for float64 input, float32 otherwise."""
    return F64 if np.dtype(dtype) == F64 else F32


# ---------------------------------------------------------------------------------------------------
# Gating
# ---------------------------------------------------------------------------------------------------


def _sigmoid(v):
    if v == math.inf:
        return 1.0
    if v == -math.inf:
        return 0.0
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    z = math.exp(v)
    return z / (1.0 + z)


def scores(logits, score):
    """probs [T, E] float64: softmax over experts (+inf entries share the mass) or elementwise sigmoid."""
    x = np.asarray(logits).astype(F64)
    T, E = x.shape
    probs = np.zeros((T, E), F64)
    for t in range(T):
        row = x[t]
        if score == "sigmoid":
            probs[t] = [_sigmoid(v) for v in row]
            continue
        num_pos_inf = sum(1 for v in row if v == math.inf)
        if num_pos_inf:
            probs[t] = [1.0 / num_pos_inf if v == math.inf else 0.0 for v in row]
            continue
        m = max(row)
        ex = [math.exp(v - m) for v in row]
        total = math.fsum(ex)
        probs[t] = [v / total for v in ex]
    return probs


def _group_mask(key, k, num_groups, topk_groups, dt):
    """Selectable experts of one token: the topk_groups best groups by the sum of their top-m keys."""
    E = len(key)
    size = E // num_groups
    m = max(1, k // topk_groups)
    group_scores = []
    for g in range(num_groups):
        best = sorted(key[g * size:(g + 1) * size], reverse=True)[:m]
        total = dt.type(0)
        for v in best:
            total = dt.type(total + v)
        group_scores.append(total)
    order = sorted(range(num_groups), key=lambda g: (-group_scores[g], g))
    keep = set(order[:topk_groups])
    return [e // size in keep for e in range(E)]


def select(probs, k, bias=None, num_groups=None, topk_groups=None, dt=F32):
    """expert_ids [T, k] int32: top-k of probs + bias (in dtype dt), masked groups at -inf,
    ties to the lower expert index, slots in descending key order."""
    probs = np.asarray(probs)
    T, E = probs.shape
    ids = np.zeros((T, k), np.int32)
    for t in range(T):
        key = [dt.type(probs[t, e]) for e in range(E)]
        if bias is not None:
            key = [dt.type(key[e] + dt.type(bias[e])) for e in range(E)]
        if num_groups is not None:
            mask = _group_mask(key, k, num_groups, topk_groups, dt)
            key = [key[e] if mask[e] else -math.inf for e in range(E)]
        order = sorted(range(E), key=lambda e: (-key[e], e))
        ids[t] = order[:k]
    return ids


# ---------------------------------------------------------------------------------------------------
# Capacity and layout
# ---------------------------------------------------------------------------------------------------


def resolve_capacity(T, k, E, capacity=None, capacity_factor=None, min_capacity=0, capacity_multiple=1):
    """C = capacity or ceil(cf*T*k/E), then max(C, min_capacity), then rounded up; None = dropless."""
    if capacity is None and capacity_factor is None:
        return None
    C = capacity if capacity is not None else math.ceil(capacity_factor * T * k / E)
    C = max(C, min_capacity)
    return -(-C // capacity_multiple) * capacity_multiple


def keep_mask(expert_ids, E, C, priority, prio_key=None):
    """kept [T, S] bool: per expert, the first C picks in priority order (all picks when C is None)."""
    T, S = expert_ids.shape
    kept = expert_ids >= 0
    if C is None:
        return kept
    kept = np.zeros((T, S), bool)
    picks_of = [[] for _ in range(E)]
    for t in range(T):
        for s in range(S):
            if expert_ids[t, s] >= 0:
                picks_of[expert_ids[t, s]].append((t, s))
    for e, picks in enumerate(picks_of):
        if priority == "slot":
            picks.sort(key=lambda p: (p[1], p[0]))
        elif priority == "token":
            picks.sort(key=lambda p: (p[0], p[1]))
        elif priority == "score":
            picks.sort(key=lambda p: (-prio_key[p], p[0], p[1]))
        else:
            raise ValueError(priority)
        for t, s in picks[:C]:
            kept[t, s] = True
    return kept


def layout(expert_ids, kept, E, C, pad_to=1):
    """dest [T,S], src [R], expert_offsets [E+1], tokens_per_expert [E]; segment rows in token order."""
    T, S = expert_ids.shape
    tokens = [[] for _ in range(E)]  # kept tokens of each expert, ascending
    for t in range(T):
        for s in range(S):
            if kept[t, s]:
                tokens[expert_ids[t, s]].append(t)
    offsets = np.zeros(E + 1, np.int64)
    if C is not None:
        R = E * C
        for e in range(E):
            offsets[e + 1] = offsets[e] + C
    else:
        R = T * S if pad_to == 1 else T * S + E * (pad_to - 1)
        for e in range(E):
            offsets[e + 1] = offsets[e] + -(-len(tokens[e]) // pad_to) * pad_to
    dest = np.full((T, S), -1, np.int32)
    src = np.full(R, -1, np.int32)
    row_of = {}
    for e in range(E):
        for i, t in enumerate(tokens[e]):
            src[offsets[e] + i] = t
            row_of[t, e] = offsets[e] + i
    for t in range(T):
        for s in range(S):
            if kept[t, s]:
                dest[t, s] = row_of[t, expert_ids[t, s]]
    tokens_per_expert = np.array([len(x) for x in tokens], np.int64)
    return dest, src, offsets, tokens_per_expert


def route_from_probs(probs, k, *, normalize="topk", scale=1.0, bias=None, num_groups=None,
                     topk_groups=None, capacity=None, capacity_factor=None, min_capacity=0,
                     capacity_multiple=1, priority="slot", pad_to=1, dt=None):
    """Every RoutingPlan field of route(), given the scores; arithmetic in dtype dt (default: probs')."""
    probs = np.asarray(probs)
    dt = np.dtype(dt or probs.dtype)
    T, E = probs.shape
    ids = select(probs, k, bias, num_groups, topk_groups, dt)
    raw = np.zeros((T, k), dt)
    topk_w = np.zeros((T, k), dt)
    for t in range(T):
        total = dt.type(0)
        for s in range(k):
            raw[t, s] = probs[t, ids[t, s]]
            total = dt.type(total + raw[t, s])
        topk_w[t] = [dt.type(raw[t, s] / (total if total != 0 else dt.type(1))) for s in range(k)]
    prio = topk_w if normalize == "topk" else raw
    prio_key = {(t, s): prio[t, s] for t in range(T) for s in range(k)}
    C = resolve_capacity(T, k, E, capacity, capacity_factor, min_capacity, capacity_multiple)
    kept = keep_mask(ids, E, C, priority, prio_key)
    dest, src, offsets, tokens_per_expert = layout(ids, kept, E, C, pad_to)
    weights = np.zeros((T, k), dt)
    for t in range(T):
        kept_total = dt.type(0)
        for s in range(k):
            if kept[t, s]:
                kept_total = dt.type(kept_total + raw[t, s])
        for s in range(k):
            if not kept[t, s]:
                continue
            if normalize == "none":
                w = raw[t, s]
            elif normalize == "topk":
                w = topk_w[t, s]
            else:
                w = dt.type(raw[t, s] / (kept_total if kept_total != 0 else dt.type(1)))
            weights[t, s] = w * scale
    assigned = np.bincount(ids.ravel(), minlength=E).astype(np.int64)
    return dict(expert_ids=ids, weights=weights.astype(probs.dtype), probs=probs, dest=dest, src=src,
                expert_offsets=offsets, tokens_per_expert=tokens_per_expert,
                assigned_per_expert=assigned, capacity=C)


def route(logits, k, *, score="softmax", **options):
    """route() computed entirely in float64 (scores included)."""
    return route_from_probs(scores(logits, score), k, dt=F64, **options)


# ---------------------------------------------------------------------------------------------------
# Expert choice
# ---------------------------------------------------------------------------------------------------


def expert_choice_capacity(T, E, capacity_factor=1.0, capacity=None):
    return capacity if capacity is not None else math.ceil(T * capacity_factor / E)


def expert_choice_from_probs(probs, C):
    """Each expert takes its min(C, T) best tokens (ties: lower token); slot s is expert s."""
    probs = np.asarray(probs)
    T, E = probs.shape
    take = min(C, T)
    ids = np.full((T, E), -1, np.int32)
    weights = np.zeros((T, E), probs.dtype)
    for e in range(E):
        for t in sorted(range(T), key=lambda t: (-probs[t, e], t))[:take]:
            ids[t, e] = e
            weights[t, e] = probs[t, e]
    dest, src, offsets, tokens_per_expert = layout(ids, ids >= 0, E, C)
    return dict(expert_ids=ids, weights=weights, probs=probs, dest=dest, src=src,
                expert_offsets=offsets, tokens_per_expert=tokens_per_expert,
                assigned_per_expert=np.full(E, take, np.int64), capacity=C)


# ---------------------------------------------------------------------------------------------------
# Permute and combine, forward and backward
# ---------------------------------------------------------------------------------------------------


def accumulate_dtype(dtype):
    return F64 if np.dtype(dtype) == F64 else F32


def permute(x, src):
    x = np.asarray(x)
    xp = np.zeros((len(src), x.shape[1]), x.dtype)
    for r, t in enumerate(src):
        if t >= 0:
            xp[r] = x[t]
    return xp


def combine(yp, dest, weights):
    """y [T, H] (dtype of yp): slot-order sum of w * yp[dest], accumulated in float32 (float64)."""
    yp = np.asarray(yp)
    acc_dt = accumulate_dtype(yp.dtype)
    T, S = dest.shape
    y = np.zeros((T, yp.shape[1]), acc_dt)
    for t in range(T):
        acc = np.zeros(yp.shape[1], acc_dt)
        for s in range(S):
            if dest[t, s] >= 0:
                acc = acc + acc_dt.type(weights[t, s]) * yp[dest[t, s]].astype(acc_dt)
        y[t] = acc
    return y.astype(yp.dtype)


def combine_abs(yp, dest, weights):
    """Sum of |terms| of combine in float64, the scale of its rounding error."""
    return combine(np.abs(np.asarray(yp).astype(F64)), dest, np.abs(np.asarray(weights, F64)))


def permute_backward(grad_xp, dest):
    """grad_x[t] = slot-order sum of grad_xp[dest[t, s]] (float32 accumulation for half types)."""
    return combine(grad_xp, dest, np.ones(dest.shape, F64))


def combine_backward(grad_y, yp, dest, weights):
    """(grad_yp [R, H] dtype of yp, grad_weights [T, S] float64 exact dot products)."""
    yp = np.asarray(yp)
    acc_dt = accumulate_dtype(yp.dtype)
    T, S = dest.shape
    grad_yp = np.zeros(yp.shape, acc_dt)
    grad_w = np.zeros((T, S), F64)
    for t in range(T):
        for s in range(S):
            d = dest[t, s]
            if d >= 0:
                grad_yp[d] = acc_dt.type(weights[t, s]) * np.asarray(grad_y[t]).astype(acc_dt)
                grad_w[t, s] = math.fsum(np.asarray(grad_y[t], F64) * yp[d].astype(F64))
    return grad_yp.astype(yp.dtype), grad_w


# ---------------------------------------------------------------------------------------------------
# Route backward: weights as a function of the logits with the selection held fixed
# ---------------------------------------------------------------------------------------------------


def _denominator_slots(expert_ids, dest, t, normalize):
    S = expert_ids.shape[1]
    if normalize == "topk":
        return [s for s in range(S) if expert_ids[t, s] >= 0]
    return [s for s in range(S) if dest[t, s] >= 0]


def weights_fixed(logits, expert_ids, dest, score, normalize, scale):
    """The plan's weights recomputed in float64 from logits, with its picks and drops held fixed."""
    p = scores(logits, score)
    T, S = expert_ids.shape
    w = np.zeros((T, S), F64)
    for t in range(T):
        total = 1.0
        if normalize != "none":
            total = sum(p[t, expert_ids[t, j]] for j in _denominator_slots(expert_ids, dest, t, normalize))
            total = total if total != 0 else 1.0
        for s in range(S):
            if dest[t, s] >= 0:
                w[t, s] = scale * p[t, expert_ids[t, s]] / total
    return w


def route_backward(grad_weights, expert_ids, dest, logits, score, normalize, scale):
    """Analytic d(sum grad_weights * weights)/d logits in float64."""
    p = scores(logits, score)
    g = np.asarray(grad_weights, F64)
    T, S = expert_ids.shape
    E = p.shape[1]
    grad_logits = np.zeros((T, E), F64)
    for t in range(T):
        grad_p = np.zeros(E, F64)
        J = [] if normalize == "none" else _denominator_slots(expert_ids, dest, t, normalize)
        total = sum(p[t, expert_ids[t, j]] for j in J) if J else 1.0
        total = total if total != 0 else 1.0
        for s in range(S):
            if dest[t, s] < 0:
                continue
            e = expert_ids[t, s]
            grad_p[e] += scale * g[t, s] / total
            for j in J:
                grad_p[expert_ids[t, j]] -= scale * g[t, s] * p[t, e] / total**2
        if score == "softmax":
            grad_logits[t] = p[t] * (grad_p - np.dot(p[t], grad_p))
        else:
            grad_logits[t] = grad_p * p[t] * (1.0 - p[t])
    return grad_logits


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------


def load_balancing_loss(assigned_per_expert, probs, top_k):
    probs = np.asarray(probs, F64)
    T, E = probs.shape
    if T == 0:
        return 0.0
    return E * sum(assigned_per_expert[e] / (T * top_k) * probs[:, e].mean() for e in range(E))


def z_loss(logits):
    x = np.asarray(logits).astype(F64)
    if x.shape[0] == 0:
        return 0.0
    total = 0.0
    for row in x:
        m = max(row)
        lse = m + math.log(math.fsum(math.exp(v - m) for v in row))
        total += lse**2
    return total / x.shape[0]


def cv_squared(values):
    values = np.asarray(values, F64)
    mean = values.mean()
    return 0.0 if mean == 0 else float(values.var() / mean**2)


def importance_loss(expert_ids, weights, E):
    importance = np.zeros(E, F64)
    T, S = expert_ids.shape
    for t in range(T):
        for s in range(S):
            if expert_ids[t, s] >= 0:
                importance[expert_ids[t, s]] += float(weights[t, s])
    return cv_squared(importance)


def phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def noisy_load_probs(clean_logits, noise_std, noisy_logits, k):
    clean = np.asarray(clean_logits).astype(F64)
    noisy = np.asarray(noisy_logits).astype(F64)
    T, E = clean.shape
    std = np.broadcast_to(np.asarray(noise_std, F64), (T, E))
    P = np.zeros((T, E), F64)
    for t in range(T):
        for e in range(E):
            others = sorted((noisy[t, j] for j in range(E) if j != e), reverse=True)
            threshold = others[k - 1] if k - 1 < len(others) else -math.inf
            P[t, e] = phi((clean[t, e] - threshold) / std[t, e])
    return P


def noisy_load_loss(clean_logits, noise_std, noisy_logits, k):
    return cv_squared(noisy_load_probs(clean_logits, noise_std, noisy_logits, k).sum(axis=0))


def plan_from_topk(expert_ids, weights, E, *, capacity=None, capacity_factor=None, min_capacity=0,
                   capacity_multiple=1, priority="slot", pad_to=1):
    """The plan fields (dict) of given picks: ids outside [0, E) unused; rows per expert in (t, s)
    order (a token picking an expert twice gets two rows, in slot order); weights 0 where not kept;
    probs[t, e] = sum of token t's given weights for e, in slot order, in the accumulation dtype."""
    expert_ids = np.asarray(expert_ids, np.int64)
    T, k = expert_ids.shape
    acc = np.dtype(accumulate_dtype(np.asarray(weights).dtype))
    w = np.asarray(weights).astype(acc)
    ids = np.where((expert_ids >= 0) & (expert_ids < E), expert_ids, -1).astype(np.int32)
    C = resolve_capacity(T, k, E, capacity, capacity_factor, min_capacity, capacity_multiple)
    kept = keep_mask(ids, E, C, priority, prio_key=np.where(ids >= 0, w, 0))
    picks = [[] for _ in range(E)]  # the kept (t, s) of each expert, in (t, s) order
    for t in range(T):
        for s in range(k):
            if kept[t, s]:
                picks[ids[t, s]].append((t, s))
    offsets = np.zeros(E + 1, np.int64)
    for e in range(E):
        size = C if C is not None else -(-len(picks[e]) // pad_to) * pad_to
        offsets[e + 1] = offsets[e] + size
    R = E * C if C is not None else T * k + E * (pad_to - 1)
    dest = np.full((T, k), -1, np.int32)
    src = np.full(R, -1, np.int32)
    for e in range(E):
        for i, (t, s) in enumerate(picks[e]):
            dest[t, s] = offsets[e] + i
            src[offsets[e] + i] = t
    probs = np.zeros((T, E), acc)
    for t in range(T):
        for s in range(k):
            if ids[t, s] >= 0:
                probs[t, ids[t, s]] += w[t, s]
    assigned = np.array([(ids == e).sum() for e in range(E)], np.int64)
    return dict(expert_ids=ids, weights=np.where(kept, w, 0).astype(acc), probs=probs, dest=dest, src=src,
                expert_offsets=offsets, tokens_per_expert=np.array([len(p) for p in picks], np.int64),
                assigned_per_expert=assigned, capacity=C)
