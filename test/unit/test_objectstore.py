"""The object store: content-named objects, atomic refs, export"""

import os

import pytest

from osbuild.objectstore import ObjectStore, StoreClient, StoreServer, treesum


def make(root, files):
    os.makedirs(root, exist_ok=True)
    for name, content in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (1, 1), follow_symlinks=False)
    os.utime(root, (1, 1))
    return str(root)


def test_treesum_sees_content_mode_names_links(tmp_path):
    base = treesum(make(tmp_path / "a", {"x": "1", "d/y": "2"}))
    assert base == treesum(make(tmp_path / "b", {"x": "1", "d/y": "2"}))
    assert base != treesum(make(tmp_path / "c", {"x": "1", "d/y": "3"}))
    assert base != treesum(make(tmp_path / "d", {"x": "1", "d/z": "2"}))
    mode = make(tmp_path / "e", {"x": "1", "d/y": "2"})
    os.chmod(os.path.join(mode, "x"), 0o600)
    assert base != treesum(mode)
    linked = make(tmp_path / "f", {"x": "1", "d/y": "2"})
    os.symlink("x", os.path.join(linked, "l"))
    os.utime(linked, (1, 1))
    assert base != treesum(linked)


def test_commit_and_resolve(tmp_path):
    store = ObjectStore(tmp_path / "store")
    tree = make(tmp_path / "tree", {"file": "data"})
    path = store.commit(tree, "id1")
    assert os.path.dirname(path) == store.objects
    assert store.resolve("id1") == path and store.contains("id1")
    assert os.readlink(os.path.join(store.refs, "id1")) == os.path.join("..", "objects", os.path.basename(path))
    assert os.path.exists(tree), "a copy commit keeps the source"
    assert not store.contains("id2") and store.resolve("../objects") is None


def test_move_commit_takes_the_tree_and_dedups(tmp_path):
    store = ObjectStore(tmp_path / "store")
    with store.tempdir() as work:
        first = make(os.path.join(work, "t1"), {"file": "same"})
        second = make(os.path.join(work, "t2"), {"file": "same"})
        a = store.commit(first, "a", move=True)
        b = store.commit(second, "b", move=True)
        assert a == b
        assert not os.path.exists(first) and not os.path.exists(second)
    assert os.listdir(store.tmp) == []
    assert len(os.listdir(store.objects)) == 1


def test_tempdir_is_removed_on_error(tmp_path):
    store = ObjectStore(tmp_path / "store")
    with pytest.raises(RuntimeError):
        with store.tempdir() as work:
            make(os.path.join(work, "t"), {"f": "x"})
            raise RuntimeError("boom")
    assert os.listdir(store.tmp) == [] and os.listdir(store.refs) == []


def test_new_tree_copies_base(tmp_path):
    store = ObjectStore(tmp_path / "store")
    store.commit(make(tmp_path / "tree", {"etc/a": "1"}), "base")
    with store.tempdir() as work:
        tree = store.new_tree(work, "base")
        with open(os.path.join(tree, "etc", "a"), encoding="utf-8") as f:
            assert f.read() == "1"
        assert oct(os.stat(store.new_tree(work, None)).st_mode & 0o777) == "0o755"


def test_export(tmp_path):
    store = ObjectStore(tmp_path / "store")
    store.commit(make(tmp_path / "out", {"image.tar": "archive"}), "out")
    target = tmp_path / "output"
    assert store.export("out", target) == ["image.tar"]
    assert (target / "image.tar").read_text() == "archive"
    assert sorted(os.listdir(target)) == ["image.tar"]
    with pytest.raises(KeyError):
        store.export("missing", target)


def test_store_api(tmp_path):
    store = ObjectStore(tmp_path / "store")
    path = store.commit(make(tmp_path / "t", {"f": "x"}), "tree")
    with store.tempdir() as work:
        with StoreServer(store, work, work) as server:
            client = StoreClient(server.path)
            assert client.read_tree("tree") == path
            assert client.read_tree("missing") is None
            empty = client.mkdtemp(prefix="empty-")
            assert os.path.isdir(empty) and os.listdir(empty) == []
            assert os.path.dirname(empty) == work
