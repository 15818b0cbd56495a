"""The object store: objects under random names, atomic refs, export by hard link"""

import os
import tempfile

import pytest

from osbuild.objectstore import ObjectStore, StoreClient, StoreServer


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


def test_commit_and_resolve(tmp_path):
    store = ObjectStore(tmp_path / "store")
    tree = make(tmp_path / "tree", {"file": "data"})
    path = store.commit(tree, "id1")
    assert os.path.dirname(path) == store.objects
    assert store.resolve("id1") == path and store.contains("id1")
    assert os.readlink(os.path.join(store.refs, "id1")) == os.path.join("..", "objects", os.path.basename(path))
    assert os.path.exists(tree), "a copy commit keeps the source"
    assert not store.contains("id2") and store.resolve("../objects") is None


def test_move_commit_takes_the_tree_and_a_new_commit_replaces_the_ref(tmp_path):
    store = ObjectStore(tmp_path / "store")
    with store.tempdir() as work:
        first = make(os.path.join(work, "t1"), {"file": "one"})
        second = make(os.path.join(work, "t2"), {"file": "two"})
        a = store.commit(first, "a", move=True)
        b = store.commit(second, "a", move=True)
        assert a != b and store.resolve("a") == b
        assert not os.path.exists(first) and not os.path.exists(second)
        with open(os.path.join(b, "file"), encoding="utf-8") as f:
            assert f.read() == "two"
    assert os.listdir(store.tmp) == []
    assert store.object_size(os.path.basename(b)) > 0


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
    store.commit(make(tmp_path / "out", {"image.tar": "archive", "sub/x": "1"}), "out")
    target = tmp_path / "output"
    assert store.export("out", target) == ["image.tar", "sub"]
    assert (target / "image.tar").read_text() == "archive"
    assert (target / "sub" / "x").read_text() == "1"
    assert sorted(os.listdir(target)) == ["image.tar", "sub"]
    with pytest.raises(KeyError):
        store.export("missing", target)


def test_export_shares_the_file_and_a_changed_export_is_not_served_again(tmp_path):
    store = ObjectStore(tmp_path / "store")
    obj = store.commit(make(tmp_path / "out", {"image.tar": "archive"}), "out")
    target = tmp_path / "output"
    store.export("out", target)
    assert os.stat(target / "image.tar").st_ino == os.stat(os.path.join(obj, "image.tar")).st_ino
    store.export("out", target)  # again, over its own hard link
    assert (target / "image.tar").read_text() == "archive" and os.listdir(target) == ["image.tar"]
    assert store.resolve("out") == obj, "linking and unlinking leave the object valid"

    with open(target / "image.tar", "a", encoding="utf-8") as f:
        f.write("appended in place")
    assert store.resolve("out") is None and not store.contains("out")
    with pytest.raises(KeyError):
        store.export("out", target)

    # the next build commits the output again; the damaged object goes
    new = store.commit(make(tmp_path / "out2", {"image.tar": "archive"}), "out")
    assert store.resolve("out") == new and not os.path.exists(obj)
    assert sorted(os.listdir(store.objects)) == [os.path.basename(new)]


def test_a_chmod_through_the_export_is_noticed_a_replacing_write_is_not_a_change(tmp_path):
    store = ObjectStore(tmp_path / "store")
    obj = store.commit(make(tmp_path / "out", {"image.tar": "archive"}), "out")
    target = tmp_path / "output"
    store.export("out", target)
    (target / "new.tar").write_text("other")
    os.replace(target / "new.tar", target / "image.tar")  # what tools that rewrite a file do
    assert store.resolve("out") == obj
    store.export("out", target)
    os.chmod(target / "image.tar", 0o600)
    assert store.resolve("out") is None


def test_export_to_another_filesystem_copies(tmp_path):
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    store = ObjectStore(tmp_path / "store")
    obj = store.commit(make(tmp_path / "out", {"image.tar": "archive"}), "out")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as target:
        store.export("out", target)
        assert os.stat(os.path.join(target, "image.tar")).st_ino != os.stat(os.path.join(obj, "image.tar")).st_ino
        with open(os.path.join(target, "image.tar"), "a", encoding="utf-8") as f:
            f.write("changed")
        assert store.resolve("out") == obj


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


def test_offer_output_links_into_the_module_cache_only_when_asked(tmp_path):
    store = ObjectStore(tmp_path / "store")
    obj = store.commit(make(tmp_path / "out", {"image.tar": "archive", "sub/x": "1"}), "out")
    assert not store.offer_output("org.osbuild.m", "out", obj), "no outputs/ folder: not asked"
    outputs = os.path.join(store.cache, "org.osbuild.m", "outputs")
    os.makedirs(outputs)
    assert store.offer_output("org.osbuild.m", "out", obj)
    linked = os.path.join(outputs, "out", "image.tar")
    assert os.path.samefile(linked, os.path.join(obj, "image.tar"))
    assert sorted(os.listdir(os.path.join(outputs, "out"))) == ["image.tar"], "files only"
    assert store.offer_output("org.osbuild.m", "out", obj), "again: replaced"
    assert sorted(os.listdir(outputs)) == ["out"]
    assert not store.offer_output("org.osbuild.m", "../x", obj)


def test_offer_output_never_follows_what_a_module_put_there(tmp_path):
    store = ObjectStore(tmp_path / "store")
    obj = store.commit(make(tmp_path / "out", {"image.tar": "archive"}), "out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    module = os.path.join(store.cache, "org.osbuild.m")
    os.makedirs(module)
    os.symlink(elsewhere, os.path.join(module, "outputs"))
    assert not store.offer_output("org.osbuild.m", "out", obj)
    os.unlink(os.path.join(module, "outputs"))
    os.makedirs(os.path.join(module, "outputs"))
    os.symlink(elsewhere, os.path.join(module, "outputs", "out"))  # where the folder will go
    assert store.offer_output("org.osbuild.m", "out", obj)
    assert os.listdir(elsewhere) == [], "the link was replaced, not followed"
    assert os.path.isdir(os.path.join(module, "outputs", "out"))
    assert not os.path.islink(os.path.join(module, "outputs", "out"))


def test_an_object_of_an_older_store_gets_its_stamp_before_it_is_shared(tmp_path):
    store = ObjectStore(tmp_path / "store")
    obj = store.commit(make(tmp_path / "out", {"image.tar": "archive"}), "out")
    os.unlink(os.path.join(store.stamps, os.path.basename(obj)))  # as a store of before stamps
    target = tmp_path / "output"
    store.export("out", target)
    with open(target / "image.tar", "a", encoding="utf-8") as f:
        f.write("appended in place")
    assert store.resolve("out") is None
