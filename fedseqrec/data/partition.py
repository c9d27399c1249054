"""Client partitions for federation: every user in exactly one client, deterministic by seed.

- ``per-user``: one client per user (cross-device federations);
- ``iid``: users shuffled into K equal silos;
- ``dirichlet``: non-IID silos; the users of each dominant item category are spread over K silos by
  proportions drawn from Dirichlet(alpha) (small alpha: each category lands in few silos);
- ``attribute``: natural silos by a user attribute (``region``, ``occupation``, ``zip_code:1`` = first
  character of the zip code), grouped into K silos when fewer are asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fedseqrec.data.sequences import SequenceData
from fedseqrec.data.splits import Split
from fedseqrec.errors import UserError

SCHEMES = ("per-user", "iid", "dirichlet", "attribute")
CATEGORY_COLUMNS = ("category", "class", "genre", "genres", "category_id", "categoryid")
ATTRIBUTE_COLUMNS = ("region", "occupation", "zip_code")


@dataclass
class Partition:
    scheme: str
    client_of_user: np.ndarray  # int64 by user id; index 0 (padding user) is -1
    params: dict = field(default_factory=dict)
    client_names: list[str] = field(default_factory=list)  # attribute silos: their values; else empty

    def name(self, client: int) -> str:
        return self.client_names[client] if self.client_names else str(client)

    @property
    def n_clients(self) -> int:
        return int(self.client_of_user.max()) + 1

    def clients(self) -> list[np.ndarray]:
        order = np.argsort(self.client_of_user[1:], kind="stable") + 1
        bounds = np.cumsum(np.bincount(self.client_of_user[1:], minlength=self.n_clients))[:-1]
        return np.split(order, bounds)


@dataclass
class ClientData:
    """One client's users: what it trains and evaluates on."""

    client: int  # partition id: the client's identity in the federation
    sequences: SequenceData
    split: Split
    users: np.ndarray  # user ids this client holds


def partition_users(
    data: SequenceData,
    scheme: str,
    clients: int | None = None,
    seed: int = 0,
    alpha: float = 0.5,
    attribute: str | None = None,
    category: str | None = None,
) -> Partition:
    if scheme not in SCHEMES:
        raise UserError(f"unknown partition {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if clients is not None and clients < 1:
        raise UserError(f"--clients must be >= 1, got {clients}")
    if clients is not None and clients > data.n_users:
        raise UserError(f"--clients {clients} is more than the {data.n_users} users in the data")
    rng = np.random.default_rng(seed)
    if scheme == "per-user":
        if clients not in (None, data.n_users):
            raise UserError(f"per-user makes one client per user ({data.n_users}); drop --clients or use iid")
        return Partition(scheme, np.arange(-1, data.n_users, dtype=np.int64), {})
    if scheme == "attribute":
        return _by_attribute(data, attribute, clients)
    if clients is None:
        raise UserError(f"the {scheme} partition needs --clients K")
    if scheme == "iid":
        assignment = np.empty(data.n_users, dtype=np.int64)
        for k, users in enumerate(np.array_split(rng.permutation(data.n_users), clients)):
            assignment[users] = k
        return Partition(scheme, np.concatenate([[-1], assignment]), {"clients": clients, "seed": seed})
    if alpha <= 0:
        raise UserError(f"--alpha must be > 0, got {alpha}")
    dominant, column = dominant_categories(data, category)
    assignment = _dirichlet(dominant[1:], clients, alpha, rng)
    params = {"clients": clients, "seed": seed, "alpha": alpha, "category": column}
    return Partition(scheme, np.concatenate([[-1], assignment]), params)


def category_column(data: SequenceData, requested: str | None) -> str:
    columns = list(data.item_features.columns)
    if requested is not None:
        if requested not in columns:
            raise UserError(f"item feature {requested!r} not found; the items have {columns or 'no features'}")
        return requested
    found = next((c for c in CATEGORY_COLUMNS if c in columns), None)
    if found is None:
        raise UserError(
            f"this partition needs an item category, and the items have {columns or 'no features'}; "
            "pass --category COLUMN or use the iid partition"
        )
    return found


def dominant_categories(data: SequenceData, requested: str | None = None) -> tuple[np.ndarray, str]:
    """Each user's most frequent item category (multi-valued categories such as genres count each value);
    ties go to the category that sorts first. Index 0 (padding user) is -1."""
    column = category_column(data, requested)
    tokens = data.item_features[column].str.split()
    exploded = tokens.explode().dropna()
    codes, names = pd.factorize(exploded, sort=True)
    per_item = pd.DataFrame({"item": exploded.index.to_numpy(), "category": codes})
    events = pd.DataFrame({"user": data.user_of_event, "item": data.items})
    counts = events.merge(per_item, on="item").groupby(["user", "category"]).size().unstack(fill_value=0)
    dominant = np.full(data.n_users + 1, -1, dtype=np.int64)
    dominant[counts.index.to_numpy()] = counts.columns.to_numpy()[np.argmax(counts.to_numpy(), axis=1)]
    # Users whose items have no category form their own group.
    dominant[1:][dominant[1:] < 0] = len(names)
    return dominant, column


def _dirichlet(groups: np.ndarray, clients: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    assignment = np.empty(len(groups), dtype=np.int64)
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        shares = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for k, chunk in enumerate(np.split(members, cuts)):
            assignment[chunk] = k
    # A silo left empty by the draw takes one user from the largest silo, so K clients really exist.
    for k in range(clients):
        sizes = np.bincount(assignment, minlength=clients)
        if sizes[k] == 0:
            donor = rng.choice(np.flatnonzero(assignment == int(np.argmax(sizes))))
            assignment[donor] = k
    return assignment


def _attribute_values(data: SequenceData, attribute: str | None) -> tuple[pd.Series, str]:
    columns = list(data.user_features.columns)
    spec = attribute or next((c for c in ATTRIBUTE_COLUMNS if c in columns), None)
    if spec is None:
        raise UserError(
            f"the attribute partition needs a user attribute, and the users have {columns or 'no features'}; "
            "pass --attribute COLUMN[:PREFIX]"
        )
    name, _, prefix = spec.partition(":")
    if name not in columns:
        raise UserError(f"user attribute {name!r} not found; the users have {columns or 'no features'}")
    values = data.user_features[name].astype(str)
    if prefix:
        if not prefix.isdigit() or int(prefix) < 1:
            raise UserError(f"--attribute {spec}: the prefix length after ':' must be a positive integer")
        values = values.str[: int(prefix)]
    return values.where(values != "", "unknown"), spec


def _by_attribute(data: SequenceData, attribute: str | None, clients: int | None) -> Partition:
    values, spec = _attribute_values(data, attribute)
    codes, names = pd.factorize(values, sort=True)
    groups = [str(n) for n in names]
    if clients is not None and clients > len(groups):
        raise UserError(f"--clients {clients} is more than the {len(groups)} distinct values of {spec!r}")
    if clients is not None and clients < len(groups):
        codes, groups = _merge_groups(codes, groups, clients)
    params = {"attribute": spec, "clients": len(groups)}
    return Partition("attribute", np.concatenate([[-1], codes]).astype(np.int64), params, groups)


def _merge_groups(codes: np.ndarray, names: list[str], clients: int) -> tuple[np.ndarray, list[str]]:
    """Largest group first into the currently smallest silo: balanced silos of whole attribute values."""
    sizes = np.bincount(codes, minlength=len(names))
    silo_of_group = np.empty(len(names), dtype=np.int64)
    silo_sizes = np.zeros(clients, dtype=np.int64)
    members: list[list[str]] = [[] for _ in range(clients)]
    for group in np.argsort(-sizes, kind="stable"):
        silo = int(np.argmin(silo_sizes))
        silo_of_group[group] = silo
        silo_sizes[silo] += sizes[group]
        members[silo].append(names[group])
    return silo_of_group[codes], ["+".join(sorted(m)) for m in members]


def category_skew(partition: Partition, groups: np.ndarray) -> float:
    """Mean total-variation distance between each client's group mix and the global mix (0 = IID)."""
    user_groups = groups[1:]
    clients = partition.client_of_user[1:]
    n_groups = int(user_groups.max()) + 1
    table = np.zeros((partition.n_clients, n_groups))
    np.add.at(table, (clients, user_groups), 1.0)
    global_mix = table.sum(axis=0) / table.sum()
    client_mix = table / table.sum(axis=1, keepdims=True)
    return float(0.5 * np.abs(client_mix - global_mix).sum(axis=1).mean())
