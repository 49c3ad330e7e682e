"""Dataset loading (IDX, CIFAR-10 pickles, digits), downloads with checksums, and Batches."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import SHARED
from incop.errors import UserError
from incop.workload import data
from incop.workload.data import DATASETS, Batches, DataError, load_dataset

IDX_STEMS = {
    "train-images-idx3-ubyte": "train_x",
    "train-labels-idx1-ubyte": "train_y",
    "t10k-images-idx3-ubyte": "test_x",
    "t10k-labels-idx1-ubyte": "test_y",
}


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(f">{1 + array.ndim}I", 0x800 + array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_arrays(n_train: int = 30, n_test: int = 10, size: int = 28, channels: int = 0) -> dict:
    """Random uint8 images ((N, size, size), or (N, channels, size, size)) and cycling labels."""
    rng = np.random.default_rng(0)
    shape = (size, size) if channels == 0 else (channels, size, size)
    return {
        "train_x": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train_y": np.arange(n_train, dtype=np.uint8) % 10,
        "test_x": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "test_y": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }


def write_idx(folder: Path, arrays: dict, compress: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, key in IDX_STEMS.items():
        payload = idx_bytes(arrays[key])
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)


def cifar_batches(arrays: dict) -> dict[str, bytes]:
    """Pickled CIFAR-10 batches: five train batches splitting train_x, and test_batch."""

    def batch(x: np.ndarray, y: np.ndarray) -> bytes:
        content = {b"data": x.reshape(len(x), -1), b"labels": [int(v) for v in y]}
        return pickle.dumps({b"batch_label": b"fake", **content}, protocol=2)

    xs, ys = np.array_split(arrays["train_x"], 5), np.array_split(arrays["train_y"], 5)
    out = {f"data_batch_{i}": batch(x, y) for i, (x, y) in enumerate(zip(xs, ys, strict=True), 1)}
    out["test_batch"] = batch(arrays["test_x"], arrays["test_y"])
    return out


def write_cifar_tar(path: Path, blobs: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def write_cifar_dir(folder: Path, blobs: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)


def check_loaded(ds: data.Dataset, arrays: dict, channels: int) -> None:
    n, m = len(arrays["train_y"]), len(arrays["test_y"])
    size = ds.info.image_size
    assert ds.train_x.shape == (n, channels, size, size)
    assert ds.test_x.shape == (m, channels, size, size)
    assert ds.train_x.dtype == ds.test_x.dtype == torch.float32
    assert ds.train_y.dtype == ds.test_y.dtype == torch.int64
    assert ds.train_y.tolist() == arrays["train_y"].tolist()
    assert ds.test_y.tolist() == arrays["test_y"].tolist()
    per_channel = (0, 2, 3)
    assert torch.allclose(ds.train_x.mean(dim=per_channel), torch.zeros(channels), atol=1e-5)
    assert torch.allclose(ds.train_x.std(dim=per_channel), torch.ones(channels), atol=1e-5)
    # The test split is normalised with the train statistics, not its own.
    raw_train = torch.from_numpy(arrays["train_x"] / np.float32(255)).view(n, channels, size, size)
    raw_test = torch.from_numpy(arrays["test_x"] / np.float32(255)).view(m, channels, size, size)
    mean = raw_train.mean(dim=per_channel, keepdim=True)
    std = raw_train.std(dim=per_channel, keepdim=True)
    assert torch.allclose(ds.test_x, (raw_test - mean) / std, atol=1e-4)


# --- MNIST-like IDX datasets ------------------------------------------------------------------

LAYOUTS = {  # data_dir relative to tmp_path, and where the files go relative to it
    "flat": ("", ""),
    "raw": ("", "raw"),
    "torchvision": ("", "{folder}/raw"),
    "inside-raw": ("{folder}/raw", ""),
}
TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_datasets_load_from_every_layout(tmp_path, name, layout):
    given_dir, files_dir = (p.format(folder=TORCHVISION[name]) for p in LAYOUTS[layout])
    arrays = fake_arrays()
    write_idx(tmp_path / given_dir / files_dir, arrays)
    ds = load_dataset(name, tmp_path / given_dir)
    assert ds.info == data.DatasetInfo(name, channels=1, image_size=28, num_classes=10)
    check_loaded(ds, arrays, channels=1)


def test_idx_uncompressed_and_env_var(tmp_path, monkeypatch):
    arrays = fake_arrays()
    write_idx(tmp_path / "raw", arrays, compress=False)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    check_loaded(load_dataset("mnist"), arrays, channels=1)


def test_dataset_named_folder_wins_over_shared_raw(tmp_path):
    mnist, fashion = fake_arrays(n_train=20), fake_arrays(n_train=30)
    write_idx(tmp_path / "raw", mnist)
    write_idx(tmp_path / "FashionMNIST" / "raw", fashion)
    assert len(load_dataset("fashion-mnist", tmp_path).train_y) == 30


def test_default_data_dir_is_in_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.data_root() == tmp_path / ".cache" / "incop" / "data"
    assert data.data_root("~/x") == tmp_path / "x"
    monkeypatch.setenv(data.ENV_VAR, "/elsewhere")
    assert data.data_root() == Path("/elsewhere")


def test_missing_idx_files_message(tmp_path):
    write_idx(tmp_path / "raw", fake_arrays())
    (tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", tmp_path)
    message = str(err.value)
    assert "fashion-mnist" in message
    for stem in IDX_STEMS:
        assert f"{stem}.gz" in message
    for folder in (tmp_path, tmp_path / "raw", tmp_path / "FashionMNIST" / "raw"):
        assert f"  {folder}\n" in message
    assert "download=True" in message and "--download" in message
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" in message


def corrupt_case(tmp_path: Path, case: str) -> tuple[str, str]:
    """Write a bad IDX set; return (bad file name, expected words in the error)."""
    arrays = fake_arrays()
    write_idx(tmp_path, arrays)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    payload = gzip.decompress(images.read_bytes())
    if case == "truncated-data":
        images.write_bytes(gzip.compress(payload[:-100]))
        return images.name, "shorter than the header"
    if case == "truncated-gzip":
        images.write_bytes(images.read_bytes()[:-50])
        return images.name, "truncated or corrupt"
    if case == "bad-crc":
        packed = bytearray(images.read_bytes())
        packed[-8] ^= 0xFF  # the CRC32 in the gzip trailer
        images.write_bytes(bytes(packed))
        return images.name, "CRC"
    if case == "bad-magic":
        images.write_bytes(gzip.compress(b"\x12\x34" + payload[2:]))
        return images.name, "magic number 0x12340803"
    if case == "wrong-dims":
        images.write_bytes(gzip.compress(idx_bytes(arrays["train_x"].reshape(30, -1))))
        return images.name, "2 dimensions, expected 3"
    if case == "count-mismatch":
        (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(arrays["train_y"][:-1]))
        )
        return str(tmp_path), "30 images but 29 labels"
    if case == "bad-label":
        labels = arrays["train_y"].copy()
        labels[3] = 10
        (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
        return str(tmp_path), "labels span 0..10"
    if case == "count-zero":
        images.write_bytes(gzip.compress(idx_bytes(np.zeros((0, 28, 28), np.uint8))))
        return images.name, "holds no item"
    assert case == "wrong-size"
    images.write_bytes(gzip.compress(idx_bytes(np.zeros((30, 27, 28), np.uint8))))
    return str(tmp_path), "(1, 27, 28), expected (1, 28, 28)"


@pytest.mark.parametrize(
    "case",
    [
        "truncated-data",
        "truncated-gzip",
        "bad-crc",
        "bad-magic",
        "wrong-dims",
        "count-mismatch",
        "bad-label",
        "wrong-size",
        "count-zero",
    ],
)
def test_corrupt_idx_files_raise_data_error(tmp_path, case):
    where, words = corrupt_case(tmp_path, case)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    assert where in str(err.value)
    assert words in str(err.value)


# --- CIFAR-10 ---------------------------------------------------------------------------------

CIFAR_LAYOUTS = ["tar", "raw/tar", "CIFAR10/tar", "dir", "raw/dir", "CIFAR10/dir", "inside-dir"]


@pytest.mark.parametrize("layout", CIFAR_LAYOUTS)
def test_cifar10_loads_from_tarball_and_folder(tmp_path, layout):
    arrays = fake_arrays(n_train=20, n_test=7, size=32, channels=3)
    blobs = cifar_batches(arrays)
    if layout == "inside-dir":
        write_cifar_dir(tmp_path, blobs)
    else:
        base, kind = (tmp_path / layout).parent, Path(layout).name
        if kind == "tar":
            write_cifar_tar(base / "cifar-10-python.tar.gz", blobs)
        else:
            write_cifar_dir(base / "cifar-10-batches-py", blobs)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.info == data.DatasetInfo("cifar10", channels=3, image_size=32, num_classes=10)
    check_loaded(ds, arrays, channels=3)


def test_cifar10_keeps_pixel_layout(tmp_path):
    arrays = fake_arrays(n_train=10, n_test=2, size=32, channels=3)
    arrays["train_x"][:] = 0
    arrays["train_x"][0, 1, 2, 3] = 255  # channel 1 (green), row 2, column 3 of image 0
    write_cifar_dir(tmp_path, cifar_batches(arrays))
    ds = load_dataset("cifar10", tmp_path)
    assert (ds.train_x == ds.train_x.max()).nonzero().tolist() == [[0, 1, 2, 3]]


def test_missing_cifar_message(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and "data_batch_1" in message
    assert f"  {tmp_path}\n" in message and f"  {tmp_path / 'CIFAR10'}\n" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


CIFAR_CORRUPTIONS = {
    "missing-key": (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "b'labels'"),
    "wrong-size": (
        pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}),
        "expected uint8 (N, 3072)",
    ),
    "label-count": (
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
        "2 images but labels of shape (1,)",
    ),
    "garbage": (b"not a pickle at all", "not a readable CIFAR-10 batch"),
    "code": (pickle.dumps(Evil()), "refusing to load"),
}


@pytest.mark.parametrize("case", CIFAR_CORRUPTIONS)
def test_corrupt_cifar_batch(tmp_path, case):
    blobs = cifar_batches(fake_arrays(n_train=10, n_test=2, size=32, channels=3))
    blobs["data_batch_3"], words = CIFAR_CORRUPTIONS[case]
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", blobs)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    assert "cifar-10-batches-py/data_batch_3" in str(err.value)
    assert words in str(err.value)


def test_truncated_cifar_tarball(tmp_path):
    tarball = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tar(tarball, cifar_batches(fake_arrays(n_train=10, n_test=2, size=32, channels=3)))
    tarball.write_bytes(tarball.read_bytes()[:-200])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        load_dataset("cifar10", tmp_path)
    assert str(tarball) in str(err.value)


def test_cifar_tarball_missing_member(tmp_path):
    blobs = cifar_batches(fake_arrays(n_train=10, n_test=2, size=32, channels=3))
    del blobs["test_batch"]
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", blobs)
    with pytest.raises(DataError, match="no file cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", tmp_path)


# --- downloads --------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder whose files ``_fetch`` serves by URL basename; records every URL fetched."""
    server = tmp_path / "server"
    server.mkdir()
    fetched: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        source = server / url.rsplit("/", 1)[1]
        if not source.exists():
            raise urllib.error.URLError("404")
        shutil.copyfile(source, dest)

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    return server, fetched


def set_md5(monkeypatch, dataset: str, folder: Path, wrong: str = "") -> None:
    """Make the expected checksums those of the served files (all but ``wrong``)."""
    for path in folder.iterdir():
        digest = "0" * 32 if path.name == wrong else hashlib.md5(path.read_bytes()).hexdigest()
        monkeypatch.setitem(data._REMOTES[dataset].md5, path.name, digest)


def test_download_idx_with_good_checksums(tmp_path, monkeypatch, served):
    server, fetched = served
    arrays = fake_arrays()
    write_idx(server, arrays)
    set_md5(monkeypatch, "mnist", server)
    root = tmp_path / "data"
    check_loaded(load_dataset("mnist", root, download=True), arrays, channels=1)
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(
        f"{stem}.gz" for stem in IDX_STEMS
    )
    assert all(url.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for url in fetched)
    fetched.clear()
    load_dataset("mnist", root, download=True)
    assert fetched == []  # files present: nothing fetched again


def test_download_tries_the_next_mirror(tmp_path, monkeypatch, served):
    server, fetched = served
    write_idx(server, fake_arrays())
    remote = data._Remote(("https://dead/", "https://ok/"), dict(data._REMOTES["mnist"].md5))
    monkeypatch.setitem(data._REMOTES, "mnist", remote)
    set_md5(monkeypatch, "mnist", server)
    real_fetch = data._fetch

    def flaky(url: str, dest: Path) -> None:
        if url.startswith("https://dead/"):
            dest.write_bytes(b"partial")
            raise urllib.error.URLError("connection reset")
        real_fetch(url, dest)

    monkeypatch.setattr(data, "_fetch", flaky)
    load_dataset("mnist", tmp_path, download=True)
    assert [url.split("/")[2] for url in fetched] == ["ok"] * 4
    assert len(list((tmp_path / "MNIST" / "raw").iterdir())) == 4  # no partial file left


def test_download_rejects_bad_checksum_then_resumes(tmp_path, monkeypatch, served):
    server, fetched = served
    write_idx(server, fake_arrays())
    set_md5(monkeypatch, "fashion-mnist", server, wrong="t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="does not match") as err:
        load_dataset("fashion-mnist", tmp_path, download=True)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)
    left = sorted(p.name for p in (tmp_path / "FashionMNIST" / "raw").iterdir())
    assert left == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]  # no .part
    set_md5(monkeypatch, "fashion-mnist", server)
    fetched.clear()
    load_dataset("fashion-mnist", tmp_path, download=True)
    assert [url.rsplit("/", 1)[1] for url in fetched] == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]  # only the files still missing


def test_download_failure_leaves_nothing(tmp_path, served):
    with pytest.raises(DataError, match="could not download mnist file") as err:
        load_dataset("mnist", tmp_path, download=True)
    assert "404" in str(err.value)
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []


def test_download_cifar10(tmp_path, monkeypatch, served):
    server, fetched = served
    arrays = fake_arrays(n_train=10, n_test=3, size=32, channels=3)
    write_cifar_tar(server / "cifar-10-python.tar.gz", cifar_batches(arrays))
    set_md5(monkeypatch, "cifar10", server)
    check_loaded(load_dataset("cifar10", tmp_path, download=True), arrays, channels=3)
    assert fetched == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["cifar-10-python.tar.gz"]


# --- digits and the registry ------------------------------------------------------------------


def test_digits_fixed_stratified_split():
    torch.manual_seed(1)
    first = load_dataset("digits")
    torch.manual_seed(2)
    second = load_dataset("digits")
    assert first.info == data.DatasetInfo("digits", channels=1, image_size=8, num_classes=10)
    assert first.train_x.shape == (1437, 1, 8, 8) and first.test_x.shape == (360, 1, 8, 8)
    assert first.train_x.dtype == torch.float32 and first.train_y.dtype == torch.int64
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert abs(first.train_x.mean().item()) < 1e-5
    test_counts = torch.bincount(first.test_y, minlength=10)
    all_counts = test_counts + torch.bincount(first.train_y, minlength=10)
    assert torch.all((test_counts - all_counts * 0.2).abs() <= 1)  # stratified


def test_registry_names_and_unknown_dataset():
    assert set(DATASETS.names()) == {"digits", "mnist", "fashion-mnist", "cifar10"}
    with pytest.raises(UserError, match="did you mean 'mnist'"):
        load_dataset("mnsit")


@pytest.mark.parametrize(
    "folder", [SHARED, SHARED / "FashionMNIST", SHARED / "FashionMNIST" / "raw"]
)
def test_shared_fashion_mnist_loads_from_every_layout(folder):
    # ../shared beside the repository is part of the project's test set-up (CI has it).
    ds = load_dataset("fashion-mnist", folder)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10


def test_shared_mnist_subset():
    ds = load_dataset("mnist", SHARED / "MNIST-10k")
    assert ds.train_x.shape == (8000, 1, 28, 28) and ds.test_x.shape == (2000, 1, 28, 28)
    assert torch.bincount(ds.test_y).tolist() == [200] * 10


# --- Batches ----------------------------------------------------------------------------------


def make_batches(n: int = 23, batch_size: int = 5, **kwargs) -> Batches:
    x = torch.arange(n, dtype=torch.float32).view(n, 1) * 10
    return Batches(x, torch.arange(n), batch_size, **kwargs)


def epoch_order(batches: Batches, epoch: int) -> list[int]:
    batches.set_epoch(epoch)
    order = []
    for x, y in batches:
        assert torch.equal(x[:, 0], y.float() * 10)  # inputs stay paired with their targets
        order += y.tolist()
    return order


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 20), shuffle=st.booleans())
def test_batches_cover_every_example_once(n, batch_size, shuffle):
    batches = make_batches(n, batch_size, shuffle=shuffle, seed=3)
    for epoch in (0, 1):
        order = epoch_order(batches, epoch)
        assert sorted(order) == list(range(n))
        assert len(batches) == -(-n // batch_size)
        assert all(len(y) == batch_size for _, y in list(batches)[:-1])
    assert batches.num_examples == n


def test_shuffle_is_a_function_of_seed_and_epoch():
    a, b = make_batches(shuffle=True, seed=7), make_batches(shuffle=True, seed=7)
    assert epoch_order(a, 3) == epoch_order(b, 3)
    assert epoch_order(a, 3) == epoch_order(a, 3)
    assert epoch_order(a, 3) != epoch_order(a, 4)
    assert epoch_order(a, 3) != epoch_order(make_batches(shuffle=True, seed=8), 3)
    assert epoch_order(a, 0) != list(range(23))
    assert epoch_order(make_batches(shuffle=False), 5) == list(range(23))
    expected = torch.randperm(23, generator=torch.Generator().manual_seed(7 * 1_000_003 + 3))
    assert epoch_order(a, 3) == expected.tolist()


def test_drop_last():
    batches = make_batches(23, 5, drop_last=True, shuffle=True)
    assert len(batches) == 4 and len(list(batches)) == 4
    assert all(len(y) == 5 for _, y in batches)
    assert batches.num_examples == 23
    assert len(make_batches(4, 5, drop_last=True)) == 0
    assert len(make_batches(25, 5, drop_last=True)) == len(make_batches(25, 5)) == 5


def test_sample_is_a_fixed_subset():
    batches = make_batches(50, 8, shuffle=True)
    probe = batches.sample(12, seed=1)
    ids = epoch_order(probe, 0)
    assert len(set(ids)) == 12 and set(ids) <= set(range(50))
    assert epoch_order(probe, 1) == ids  # not shuffled
    assert epoch_order(batches.sample(12, seed=1), 0) == ids
    assert epoch_order(batches.sample(12, seed=2), 0) != ids
    assert probe.batch_size == 8 and len(probe) == 2
    assert len(batches.sample(12, seed=1, batch_size=4)) == 3
    assert sorted(epoch_order(batches.sample(500, seed=1), 0)) == list(range(50))


def test_batches_argument_errors():
    with pytest.raises(UserError, match="batch size"):
        make_batches(10, 0)
    with pytest.raises(UserError, match="sample size"):
        make_batches().sample(0, seed=0)
    with pytest.raises(ValueError, match="10 examples but y has 9"):
        Batches(torch.zeros(10, 2), torch.zeros(9), 4)


def test_batches_move_data_to_device_once():
    batches = make_batches(shuffle=True, device="meta")
    assert batches.x.device.type == batches.y.device.type == "meta"
    assert all(x.is_meta and y.is_meta for x, y in batches)
    assert batches.sample(5, seed=0).x.is_meta


# --- pixels held as bytes, normalised per batch ------------------------------------------------


def _whole_float_normalised(pixels: np.ndarray, scale: int) -> tuple[torch.Tensor, ...]:
    """How the datasets were normalised before they were held as uint8: the whole split as
    float32, torch's mean and std over it."""
    x = torch.from_numpy(pixels.astype(np.float32)).div_(scale)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    std[std == 0] = 1
    return x.sub_(mean).div_(std), mean.flatten(), std.flatten()


LOADED = [("digits", None, 16)]
if (SHARED / "FashionMNIST").exists():
    LOADED.append(("fashion-mnist", SHARED, 255))


@pytest.mark.parametrize("name, folder, scale", LOADED)
def test_batches_of_bytes_are_bitwise_the_whole_float_dataset(name, folder, scale):
    ds = load_dataset(name, folder)
    assert ds.train_pixels.dtype == ds.test_pixels.dtype == torch.uint8
    expected, mean, std = _whole_float_normalised(ds.train_pixels.numpy(), scale)
    # Statistics from integer sums, rounded once, equal torch's float32 ones on these data.
    assert torch.equal(ds.normalize.mean, mean) and torch.equal(ds.normalize.std, std)
    batches = Batches(ds.train_pixels, ds.train_y, 1000, shuffle=True, normalize=ds.normalize)
    batches.set_epoch(2)
    order = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(2))
    got = torch.cat([x for x, _ in batches])
    assert got.dtype == torch.float32
    assert torch.equal(got, expected[order])
    probe = batches.sample(300, seed=4)
    assert next(iter(probe))[0].dtype == torch.float32


def test_normalize_fit_is_exact_per_channel_and_leaves_constant_channels_at_zero():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(37, 3, 5, 5), dtype=np.uint8)
    pixels[:, 2] = 9  # a constant channel
    norm = data.Normalize.fit(pixels, 255)
    values = pixels.astype(np.float64) / 255
    np.testing.assert_allclose(norm.mean.numpy(), values.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(
        norm.std.numpy()[:2], values[:, :2].std(axis=(0, 2, 3), ddof=1), rtol=1e-7
    )
    assert norm.std[2] == 1
    out = norm(torch.from_numpy(pixels))
    assert out.shape == (37, 3, 5, 5) and torch.all(out[:, 2] == 0)


def test_a_loader_refuses_pixels_that_are_not_bytes():
    info = data.DATASET_INFO["digits"]
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    with pytest.raises(DataError, match="float32, expected uint8"):
        data._to_dataset(info, "here", (x, np.zeros(2)), (x, np.zeros(2)), scale=16)
