"""Errors as a user meets them: the *installed* ``cxrlab`` console script run in a subprocess (not Typer's test
runner, which bypasses the entry point), errors from DataLoader workers and the service, and the one function
that turns paths into images (``resolve_inputs``)."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cxrlab.data import save_manifest
from cxrlab.data.inputs import resolve_inputs
from cxrlab.errors import ConfigError, CxrlabError, InputError, find_cxrlab_error, reraise_worker_errors
from cxrlab.io import write_png

CLI = Path(sys.executable).parent / "cxrlab"  # the console script pip installed next to this interpreter


def cxrlab(*args: object, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
    """Run the installed console script; returns (exit code, stdout + stderr)."""
    proc = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "COLUMNS": "120", **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr


def assert_clean(code: int, output: str, expected_code: int, *names: str) -> None:
    assert "Traceback" not in output, output
    assert code == expected_code, (code, output)
    for name in names:
        assert name.lower() in output.lower(), (name, output)


def test_console_script_is_installed():
    assert CLI.is_file() and os.access(CLI, os.X_OK), CLI


def test_the_command_line_loads_no_network_library_until_a_command_needs_one():
    """Help and argument checking must not wait for torch (seconds on a small CPU): every area's commands
    import their libraries when they run."""
    probe = "import sys, cxrlab.cli.main; print(sorted({'torch', 'segmentation_models_pytorch', 'timm'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


# --- usage errors: usage line + one sentence, exit 2; help alone exits 0 ---------------------------------------
@pytest.mark.parametrize("args, code, names", [
    ([], 0, ["Usage: cxrlab", "segment", "train"]),                          # no arguments: help
    (["segment"], 0, ["Usage: cxrlab segment", "predict"]),                  # a group alone: its help
    (["segmnet", "predict"], 2, ["Usage:", "No such command", "segmnet"]),   # unknown command
    (["data", "phantom", "--n", "40", "out"], 2, ["Usage: cxrlab data phantom", "No such option", "--n"]),
    (["segment", "predict", "a.png", "--out", "o"], 2, ["Usage:", "Missing option", "--run"]),
    (["data", "phantom"], 2, ["Usage:", "Missing argument", "'out'"]),
    (["data", "phantom", "out", "--size", "abc"], 2, ["Usage:", "Invalid value", "--size"]),
])
def test_usage_errors(args, code, names, tmp_path):
    assert_clean(*cxrlab(*args, cwd=tmp_path), code, *names)
    assert not (tmp_path / "out").exists()  # nothing ran


# --- CxrlabErrors: "error: <sentence naming the thing>", exit 2 ----------------------------------------------
def test_missing_inputs_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "film.png"
    assert_clean(*cxrlab("segment", "predict", missing, "--run", tmp_path, "--out", tmp_path / "o"), 2,
                 f"error: {missing}", "no such file or folder")
    (tmp_path / "empty").mkdir()
    assert_clean(*cxrlab("predict", tmp_path, tmp_path / "empty", "--out", tmp_path / "p.csv"), 2,
                 str(tmp_path / "empty"), "folder holds no images")
    assert_clean(*cxrlab("data", "validate", tmp_path / "no.csv"), 2, str(tmp_path / "no.csv"), "does not exist")
    a_file = _text(tmp_path / "notes.csv", "x\n")  # an OSError naming a path the library did not check
    assert_clean(*cxrlab("data", "import", "folder", a_file, "--out", tmp_path / "imp"), 2, f"error: {a_file}",
                 "not a directory")
    assert not (tmp_path / "o").exists() and not (tmp_path / "p.csv").exists()


def test_quality_errors_are_named(tmp_path):
    assert_clean(*cxrlab("quality", "check", tmp_path, tmp_path), 2, f"error: {tmp_path}", "not a quality run")
    assert_clean(*cxrlab("quality", "train", "--out", tmp_path / "q"), 2, "Missing option", "--data")
    assert_clean(*cxrlab("quality", "train", "--data", tmp_path / "none.csv", "--out", tmp_path / "q"), 2,
                 str(tmp_path / "none.csv"), "does not exist")
    assert not (tmp_path / "q").exists()


def test_recipe_errors_are_named(tmp_path):
    assert_clean(*cxrlab("train", "no-such-recipe", "--data", tmp_path, "--out", tmp_path / "r"), 2,
                 "unknown recipe 'no-such-recipe'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmystery_key: 1\n")
    assert_clean(*cxrlab("train", bad, "--data", tmp_path, "--out", tmp_path / "r"), 2, "mystery_key",
                 "unknown key")
    assert_clean(*cxrlab("train", "phantom-diagnosis", "--data", tmp_path, "--out", tmp_path / "r",
                         "--set", "train.learning_rate=1"), 2, "train.learning_rate", "unknown key")
    assert not (tmp_path / "r").exists()


def test_input_error_in_a_dataloader_worker(tmp_path):
    """A mask that exists but is empty is read (and refused) in a DataLoader worker process during training."""
    code, out = cxrlab("data", "phantom", tmp_path / "ph", "--n-patients", "10", "--size", "64")
    assert code == 0, out
    df = pd.read_csv(tmp_path / "ph" / "manifest.csv")
    assert len(df) >= 16  # prepare_inputs uses worker processes from 16 rows on
    bad = tmp_path / "ph" / df["mask_right_lung"].iloc[len(df) // 2]
    bad.write_bytes(b"")
    code, out = cxrlab("train", "covid-icu", "--data", tmp_path / "ph", "--out", tmp_path / "run",
                       "--set", "input.size=64", "--set", "model.weights=none", "--set", "train.num_workers=1",
                       "--set", "train.stages=[{epochs: 1, lr: 0.001}]", env={"CXRLAB_HOME": str(tmp_path / "home")})
    assert_clean(code, out, 2, f"error: {bad.resolve()}", "empty file")
    assert "worker" not in out and "RuntimeError" not in out


# --- unexpected errors: one line + where the traceback went, exit 1 --------------------------------------------
BOOM = """
import sys
import cxrlab.recipes
from cxrlab.cli.main import main

def boom():
    raise ValueError("boom in list_recipes")

cxrlab.recipes.list_recipes = boom
main(["recipes", "list"])
"""


def test_unexpected_error_is_one_line_with_a_log(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("CXRLAB_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", BOOM], capture_output=True, text=True, env=env, timeout=60)
    out = proc.stdout + proc.stderr
    assert_clean(proc.returncode, out, 1, "internal error: ValueError: boom in list_recipes", "full traceback in")
    logs = list((tmp_path / "cxrlab-errors").glob("*.log"))
    assert len(logs) == 1 and str(logs[0]) in out.replace("\n", "")
    assert "Traceback" in logs[0].read_text() and "boom in list_recipes" in logs[0].read_text()
    proc = subprocess.run([sys.executable, "-c", BOOM], capture_output=True, text=True, timeout=60,
                          env={**env, "CXRLAB_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "boom in list_recipes" in proc.stderr


def test_a_file_that_ends_early_is_an_error_not_an_interruption(tmp_path):
    """click turns an EOFError inside a command into Abort; the CLI must report it as the failure it is (exit 1
    with the error named), not print "aborted" with the user-interrupt code 130."""
    script = BOOM.replace('raise ValueError("boom in list_recipes")',
                          'raise EOFError("Compressed file ended before the end-of-stream marker was reached")')
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("CXRLAB_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    out = proc.stdout + proc.stderr
    assert_clean(proc.returncode, out, 1, "internal error: EOFError: Compressed file ended", "full traceback in")
    assert "aborted" not in out


# --- one way to give images -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lung_run(tmp_path_factory) -> Path:
    from cxrlab.anatomy import train_segmentation
    from cxrlab.data.phantom import generate_phantom

    base = tmp_path_factory.mktemp("lungrun")
    manifest = generate_phantom(base / "ph", n_patients=4, size=64, seed=2)
    cfg = {"manifests": [str(manifest)], "size": 64, "arch": "unet", "encoder": "efficientnet_lite0",
           "weights": "none", "arch_kwargs": {"decoder_channels": [16, 8, 8, 8, 8]}, "epochs": 1, "batch_size": 4,
           "samples_per_epoch": 8, "val_max_images": 2, "threads": 1, "seed": 0, "evaluate_test": False}
    return train_segmentation(cfg, out=base / "lung")


def test_segment_predict_takes_a_folder_of_pngs(lung_run, tmp_path):
    images = sorted((lung_run.parent / "ph" / "images").glob("*.png"))[:3]
    folder = tmp_path / "films"
    (folder / "ward" / "bed2").mkdir(parents=True)
    for i, src in enumerate(images):
        dest = folder / ("ward/bed2" if i == 2 else ".") / src.name
        dest.write_bytes(src.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    code, out = cxrlab("segment", "predict", folder, "--run", lung_run, "--out", tmp_path / "pred", "--no-overlays")
    assert_clean(code, out, 0, "wrote masks for 3 image(s)")
    table = pd.read_csv(tmp_path / "pred" / "manifest.csv")
    assert sorted(Path(p).name for p in table["image"]) == sorted(p.name for p in images)
    assert table["patient_id"].notna().all() and table["mask_lungs"].notna().all()


def _png(path: Path, value: int = 128) -> Path:
    write_png(path, np.full((40, 40), value / 255, np.float32))
    return path


def test_resolve_inputs_accepts_files_folders_and_manifests(tmp_path):
    a = _png(tmp_path / "imgs" / "a.png")
    b = _png(tmp_path / "imgs" / "deeper" / "b.PNG")
    _png(tmp_path / "imgs" / ".hidden" / "c.png")
    (tmp_path / "imgs" / "readme.md").write_text("x")
    dicom = tmp_path / "IM0001"  # a DICOM file without suffix: recognised by its preamble
    dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)

    folder = resolve_inputs(tmp_path / "imgs")
    assert list(folder.df["image"]) == [str(a.resolve()), str(b.resolve())]  # recursive, sorted, hidden skipped
    assert folder.attrs["kind"] == "images" and folder.source is None
    files = resolve_inputs([str(b), a, a, dicom])
    assert list(files.df["image"]) == [str(b.resolve()), str(a.resolve()), str(dicom.resolve())]  # once each

    manifest = pd.DataFrame({"image": [str(a)], "patient_id": ["P1"], "source_dataset": ["t"],
                             "finding": ["normal"]})
    save_manifest(manifest, tmp_path / "manifest.csv")
    for given in (tmp_path, tmp_path / "manifest.csv"):  # a folder holding manifest.csv is that manifest
        m = resolve_inputs(given)
        assert m.attrs["kind"] == "manifest" and m.source == tmp_path / "manifest.csv"
        assert list(m.df["image"]) == [str(a.resolve())] and m.df["finding"].iloc[0] == "normal"
    mixed = resolve_inputs([tmp_path / "manifest.csv", b])
    assert mixed.attrs["kind"] == "mixed" and mixed.source is None and len(mixed) == 2


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _dangling(path: Path) -> Path:
    path.symlink_to(path.with_name("gone.png"))
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda t: t / "missing.png", "no such file or folder"),
    (lambda t: _folder(t / "empty"), "folder holds no images"),
    (lambda t: _text(t / "scan.xyz", "x"), "not an image"),
    (lambda t: _dangling(t / "link.png"), "broken symbolic link"),
    (lambda t: _text(t / "m.csv", "image,patient_id\n"), "missing required column"),
])
def test_resolve_inputs_refuses_with_the_path(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(InputError) as err:
        resolve_inputs([path])
    assert err.value.source == str(path) and reason in str(err.value)


def test_resolve_inputs_needs_something():
    with pytest.raises(InputError, match="no image"):
        resolve_inputs([])


# --- errors crossing process and thread boundaries ------------------------------------------------------------
class _Refuses(Dataset):
    def __init__(self, error: CxrlabError):
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 2:
            raise self.error
        return torch.zeros(1)


def _torch_wrapped(error: CxrlabError) -> Exception:
    """What torch raises in the main process for ``error`` raised in a worker (without its live traceback)."""
    try:
        list(DataLoader(_Refuses(error), num_workers=1))
    except Exception as exc:  # noqa: BLE001
        exc.__traceback__ = exc.__context__ = None  # frees the DataLoader iterator (and its worker) now
        return type(exc)(*exc.args)
    raise AssertionError("the worker did not raise")


@pytest.mark.parametrize("error", [InputError("/data/x.png", "empty file", field="mask_lungs"),
                                   ConfigError("input.size: must be a multiple of 32")])
def test_worker_errors_come_back_as_themselves(error):
    wrapped = _torch_wrapped(error)
    assert "Traceback" in str(wrapped) and str(error) != str(wrapped)
    found = find_cxrlab_error(wrapped)
    assert type(found) is type(error) and str(found) == str(error)
    with pytest.raises(type(error)) as clean:
        with reraise_worker_errors():
            list(DataLoader(_Refuses(error), num_workers=1))
    assert str(clean.value) == str(error) and "Traceback" not in str(clean.value)
    if isinstance(error, InputError):
        assert (clean.value.source, clean.value.field, clean.value.reason) == ("/data/x.png", "mask_lungs",
                                                                               "empty file")


def test_input_error_survives_pickling():  # process pools send exceptions back pickled
    back = pickle.loads(pickle.dumps(InputError("a.png", "truncated", field="image")))
    assert (back.source, back.reason, back.field, str(back)) == ("a.png", "truncated", "image",
                                                                 "a.png [image]: truncated")


def test_find_cxrlab_error_ignores_other_errors():
    assert find_cxrlab_error(ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback "
                                        "(most recent call last):\nValueError: x")) is None
    try:
        try:
            raise InputError("a.png", "bad")
        except InputError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert str(find_cxrlab_error(outer)) == "a.png: bad"


class _FakePipeline:
    stage_names: list[str] = []
    backend = "torch-fp32"

    def __init__(self, error: Exception):
        self.error = error

    def warmup(self) -> None:
        pass

    def model_cards(self) -> list:
        return []

    def analyze_many(self, datas, *, heatmap=True):
        if isinstance(self.error, CxrlabError):  # raised inside a DataLoader worker, as a stage's loader would
            raise _torch_wrapped(self.error)
        raise self.error


@pytest.mark.parametrize("error, status, reason", [
    (InputError("upload", "no lung found in the image"), 422, "no lung found in the image"),
    (ConfigError("the lung stage needs a mask_lungs channel"), 422, "the lung stage needs a mask_lungs channel"),
    (ValueError("a bug"), 500, "internal error"),
])
def test_service_answers_worker_errors_with_their_sentence(tmp_path, error, status, reason):
    from fastapi.testclient import TestClient

    from cxrlab.serve import create_app
    from cxrlab.serve.config import ServiceConfig
    from cxrlab.serve.samples import encode_png
    from cxrlab.serve.store import ResultStore

    image = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (256, 1))
    app = create_app(ServiceConfig(), pipeline=_FakePipeline(error), store=ResultStore(tmp_path, ttl_s=60))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/analyze", files={"file": ("x.png", encode_png(image), "image/png")})
        assert response.status_code == status, response.text
        assert response.json() == {"error": {"status": status, "reason": reason}}
        assert "Traceback" not in response.text
        assert client.get("/v1/health").json()["status"] == "ok"  # the batch worker outlived the failure


def test_busy_port_is_a_sentence():
    from cxrlab.serve.runner import check_can_listen

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            check_can_listen("127.0.0.1", port)
