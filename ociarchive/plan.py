"""The layer plan: which layer each file of the tree goes to (pure but for reading package databases)"""

import hashlib
import os
from typing import Any, Dict, List, Optional, Tuple

from .options import DEFAULT_MAX_LAYERS
from .owners import PathCanon, dpkg_owners, rpm_owners

HISTORY_PREFIX = "osbuild oci-archive: "
VOLATILE_GROUPS = "unpackaged files, package databases and all directories"
# the smallest package group that is worth a layer of its own (smaller
# ones share buckets chosen by a hash of their name)
OWN_LAYER_MIN = 4 * 1024 * 1024
# where package managers keep their state: it changes with every package
# operation, so it goes into the last, volatile layer (paths in the tree)
VOLATILE = [
    b"etc/ld.so.cache",
    b"usr/lib/sysimage/rpm",
    b"var/cache/apt",
    b"var/cache/debconf",
    b"var/cache/dnf",
    b"var/cache/ldconfig",
    b"var/cache/yum",
    b"var/lib/apt",
    b"var/lib/dnf",
    b"var/lib/dpkg",
    b"var/lib/rpm",
    b"var/lib/yum",
    b"var/log",
]
# names of a layer's groups in its history entry, before "and N more"
HISTORY_NAMES = 24


class Group:
    """Files that share a layer: one source package, one explicit path group, or nothing"""

    def __init__(self, kind: str, name: str, size: int = 0):
        self.kind = kind  # "package", "paths" or "rest"
        self.name = name
        self.size = size  # what the package database says it installs


class Layer:
    """One planned layer: its groups"""

    def __init__(self, groups: List[Group], volatile: bool = False):
        self.groups = groups
        self.volatile = volatile

    def created_by(self) -> str:
        """Its history line: `osbuild oci-archive: ` and what it holds"""
        return HISTORY_PREFIX + self.describe()

    def describe(self) -> str:
        """What it holds: `packages a, b; paths app`"""
        if self.volatile:
            return VOLATILE_GROUPS
        kinds = [("packages", [g.name for g in self.groups if g.kind == "package"]),
                 ("paths", [g.name for g in self.groups if g.kind == "paths"])]
        parts = []
        for word, names in kinds:
            if names:
                shown = ", ".join(names[:HISTORY_NAMES])
                more = f" and {len(names) - HISTORY_NAMES} more" if len(names) > HISTORY_NAMES else ""
                parts.append(f"{word} {shown}{more}")
        return "; ".join(parts)


def bucket_of(name: str, buckets: int) -> int:
    """A bucket for a group name that depends on nothing else"""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "big") % buckets


def place_groups(packages: List[Group], explicit: List[Group], most: int) -> List[Layer]:
    """Layers for the groups, the volatile last one excluded, most stable first

    Explicit path groups get a layer each. Of the rest of the budget, half
    (rounded down) holds the largest package groups of at least
    OWN_LAYER_MIN, one each; every other package group goes to a bucket
    chosen by a hash of its name alone. A group's place thus depends on its
    own name and size, and, for the largest, on the ranks next to it: one
    package changing moves no other package between layers (unless it
    crosses the rank of the last own layer, which moves that one package).
    """
    budget = most - 1 - len(explicit)
    layers: List[Layer] = []
    if budget >= 1 and packages:
        own_slots = budget // 2
        big = sorted((g for g in packages if g.size >= OWN_LAYER_MIN), key=lambda g: (-g.size, g.name))
        own = sorted(big[:own_slots], key=lambda g: g.name)
        buckets = budget - len(own)
        shared: List[List[Group]] = [[] for _ in range(buckets)]
        owned = {id(g) for g in own}
        for group in sorted(packages, key=lambda g: g.name):
            if id(group) not in owned:
                shared[bucket_of(group.name, buckets)].append(group)
        layers += [Layer([g]) for g in own]
        layers += [Layer(groups) for groups in shared if groups]
    layers += [Layer([g]) for g in explicit]
    return layers


def explicit_groups(options: Dict[str, Any], canon: PathCanon) -> Tuple[List[Group], Dict[bytes, Group]]:
    """The groups of options.layers.paths, and each of their tree paths"""
    groups: List[Group] = []
    paths: Dict[bytes, Group] = {}
    for spec in options.get("paths", []):
        group = Group("paths", spec["name"])
        groups.append(group)
        for path in spec["paths"]:
            key = canon(os.fsencode(path)) if path.strip("/") else b""
            if key is not None:
                paths[key] = group
    return groups, paths


class LayerPlan:
    """The layers of a tree and where each of its entries goes

    Known before the tree is read: a file goes to the layer of the explicit
    group it is in (at or below one of its paths), else to the volatile one
    when it is package state, else to the layer of its owner; unowned files
    and every directory go to the volatile layer, which comes last.
    """

    def __init__(self, layers: List[Layer], owners: Dict[bytes, int], explicit: Dict[bytes, int]):
        self.layers = layers  # the volatile last one included
        self.owners = owners  # tree path (b"usr/bin/ls") -> layer index
        self.explicit = explicit  # tree path of an explicit group -> layer index
        self.volatile_paths = set(VOLATILE)

    @staticmethod
    def single() -> "LayerPlan":
        """Everything in one layer"""
        return LayerPlan([Layer([Group("rest", "")], volatile=True)], {}, {})

    @property
    def last(self) -> int:
        return len(self.layers) - 1

    def route(self, key: bytes) -> int:
        """The layer of the file at tree path `key`"""
        paths = [key]  # it and the directories above it, the deepest first
        while paths[-1]:
            paths.append(paths[-1].rpartition(b"/")[0])
        explicit = next((self.explicit[p] for p in paths if p in self.explicit), None)
        if explicit is not None:
            return explicit
        if any(p in self.volatile_paths for p in paths):
            return self.last
        return self.owners.get(key, self.last)


def plan_layers(root: bytes, options: Dict[str, Any], log) -> Optional[LayerPlan]:
    """Split the tree at `root` into layers by who owns each file; None
    when there is nothing to split by (one layer of everything). Only the
    package databases are read, not the tree: a group's size is what its
    database says it installs. The options are checked
    (check_layer_options) by the caller."""
    canon = PathCanon(root)
    sizes: Dict[bytes, int] = {}
    owners = rpm_owners(root, canon, log, sizes)
    owners.update(dpkg_owners(root, canon, log, sizes))
    explicit, explicit_paths = explicit_groups(options, canon)
    if not owners:
        log("oci-archive: layers: no package database in the tree: all files are unpackaged")
        if not explicit_paths:
            return None
    packages = {name: Group("package", os.fsdecode(name), sizes.get(name, 0)) for name in set(owners.values())}
    layers = place_groups(list(packages.values()), explicit, options.get("max", DEFAULT_MAX_LAYERS))
    layers.append(Layer([Group("rest", "")], volatile=True))
    index = {id(g): i for i, layer in enumerate(layers) for g in layer.groups}
    by_name = {name: index[id(group)] for name, group in packages.items()}
    return LayerPlan(layers, {path: by_name[name] for path, name in owners.items()},
                     {path: index[id(group)] for path, group in explicit_paths.items()})
