"""Input files made to hurt: headers that promise terabytes, formats the task never declared, paths
that are no files, names that would split an output line. Each costs one line naming the file, what
is wrong and the limit, and every other input is still predicted."""

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format
from PIL import EpsImagePlugin, Image, ImageFile

from {{ cookiecutter.package_name }} import predict
from {{ cookiecutter.package_name }}.errors import UserError, one_line
from {{ cookiecutter.package_name }}.predict import Predictor, read_inputs, read_limited
from {{ cookiecutter.package_name }}.tasks import base, get_task
from {{ cookiecutter.package_name }}.tasks.digits import IMAGES

from .conftest import valid_sample, write_digit_png, write_native_file
from .test_cli import PACKAGE, run


def write_npy_header(path: Path, shape: tuple, descr: str = "<f8", data: bytes = b"") -> Path:
    """A .npy file whose header says `shape` and `descr`, followed by `data` (whatever its size)."""
    with path.open("wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": descr, "fortran_order": False, "shape": shape})
        handle.write(data)
    return path


class Unpickled:
    """An object that leaves a file behind when it is unpickled: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --- .npy: the header is checked before anything is allocated -----------------------------------


def test_npy_header_promising_terabytes_is_refused_before_allocating(task, tmp_path):
    spec = task.input_spec
    path = write_npy_header(tmp_path / "huge.npy", (10**10, *spec.shape), data=b"\0" * 64)
    message = f"huge.npy: 10,000,000,000 samples; one input may hold {spec.max_samples:,}; split it$"
    with pytest.raises(UserError, match=message):
        read_inputs(path, task)
    two = np.zeros((2, *spec.shape)).tobytes()
    short = write_npy_header(tmp_path / "short.npy", (5, *spec.shape), data=two)
    with pytest.raises(UserError, match=r"short\.npy: not a readable \.npy array \(its header promises"):
        read_inputs(short, task)
    negative = write_npy_header(tmp_path / "negative.npy", (-1, *spec.shape))
    with pytest.raises(UserError, match=r"negative\.npy: shape \(-1,"):
        read_inputs(negative, task)


def test_npy_pickles_are_never_loaded(task, tmp_path):
    marker = tmp_path / "unpickled"
    objects = np.empty(1, dtype=object)
    objects[0] = Unpickled(marker)
    np.save(tmp_path / "pickle.npy", objects, allow_pickle=True)
    with pytest.raises(UserError, match=r"pickle\.npy: holds Python objects \(a pickle\), never loaded"):
        read_inputs(tmp_path / "pickle.npy", task)
    assert not marker.exists()
    np.load(tmp_path / "pickle.npy", allow_pickle=True)[0].close()  # the file would have done it
    assert marker.exists()


@pytest.mark.parametrize("dtype", ["<f8", ">f4", "<f2", "u1", "<i8", "?"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_reads_back_what_numpy_wrote(task, tmp_path, dtype, order):
    spec = task.input_spec
    array = (np.arange(3 * spec.size).reshape(3, *spec.shape) % 7).astype(dtype)
    np.save(tmp_path / "x.npy", np.asfortranarray(array) if order == "F" else array)
    assert (b"'fortran_order': True" in (tmp_path / "x.npy").read_bytes()) == (order == "F")
    data = (tmp_path / "x.npy").read_bytes()
    assert np.array_equal(predict.read_npy(data, "x.npy", spec), np.load(tmp_path / "x.npy"))


# --- images: the content decides, only the declared decoders run, the size comes from the header ---


@pytest.fixture
def digit_image(tmp_path) -> Image.Image:
    sample = get_task("digits").load_splits(42, 0.15, 0.2).test.inputs[0]
    return Image.open(write_digit_png(sample, tmp_path / "source.png"))


@pytest.fixture
def no_eps_reader(monkeypatch):
    """Fail the test (through any `except Exception`) if Pillow's EPS reader, which runs
    Ghostscript, ever opens a file."""
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: pytest.fail("EPS reader ran"))


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF", "EPS"])
def test_an_undeclared_format_named_png_is_refused_by_its_content(digit_image, tmp_path, fmt, no_eps_reader):
    path = tmp_path / f"{fmt.lower()}.png"
    digit_image.save(path, format=fmt)  # real files, as Pillow writes them
    if fmt == "EPS":
        assert path.read_bytes().startswith(b"%!PS-Adobe-3.0 EPSF-3.0")
    article = "an" if fmt == "EPS" else "a"
    message = f"^{re.escape(str(path))}: {article} {fmt} image, not PNG/JPEG; convert it to PNG$"
    with pytest.raises(UserError, match=message):
        read_inputs(path, get_task("digits"))


def test_only_the_declared_decoders_ever_see_a_file(digit_image, tmp_path, monkeypatch, no_eps_reader):
    """Even content that passes for PNG reaches Pillow with the declared formats alone: an EPS file
    the magic check took for a PNG would meet the PNG decoder, never Ghostscript."""
    calls, real_open = [], Image.open

    def spy(fp, *args, **kwargs):
        calls.append(kwargs.get("formats"))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    digit_image.save(tmp_path / "eps.png", format="EPS")
    digit_image.convert("RGB").save(tmp_path / "photo.png", format="JPEG")  # a JPEG by any name is read
    digits = get_task("digits")
    assert len(read_inputs(tmp_path / "photo.png", digits)) == 1
    monkeypatch.setattr(base, "image_format", lambda data: "PNG")  # a magic check fooled
    with pytest.raises(UserError, match=r"eps\.png: not a readable PNG image \(UnidentifiedImageError"):
        read_inputs(tmp_path / "eps.png", digits)
    assert calls == [list(IMAGES.formats)] * 2 and set(IMAGES.formats) == {"PNG", "JPEG"}


def test_image_size_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    Image.new("1", (5000, 5000)).save(tmp_path / "big.png")  # 25 megapixels in a few kilobytes
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # over Pillow's own bomb limit
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
    digits = get_task("digits")
    limit = f"over the limit of {base.MAX_VALUES:,} pixels; scale it down$"
    with pytest.raises(UserError, match=f"big.png: an image of 5000x5000 pixels, {limit}"):
        read_inputs(tmp_path / "big.png", digits)
    with pytest.raises(UserError, match=f"bomb.png: an image of more than [0-9,]+ pixels, {limit}"):
        read_inputs(tmp_path / "bomb.png", digits)


def test_damaged_images_are_one_line(digit_image, tmp_path):
    digit_image.save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"^\S+cut\.png: not a readable PNG image \(OSError: .*truncated"):
        read_inputs(tmp_path / "cut.png", get_task("digits"))


# --- paths that are not files, and the size of any input ------------------------------------------


def test_paths_that_are_not_files_say_what_they_are(task, tmp_path):
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "loop_a.npy").symlink_to(tmp_path / "loop_b.npy")
    (tmp_path / "loop_b.npy").symlink_to(tmp_path / "loop_a.npy")
    (tmp_path / "dangling.npy").symlink_to(tmp_path / "gone.npy")
    cases = {
        tmp_path / "folder.npy": "is a directory; name the files in it",
        tmp_path / "loop_a.npy": "is a symlink loop; it cannot be resolved to a file",
        tmp_path / "dangling.npy": r"no such file \(a broken symlink\)",
        tmp_path / "missing.npy": "no such file$",
        Path(os.devnull): r"is not a regular file \(a device, pipe or socket\)",
    }
    for path, message in cases.items():
        with pytest.raises(UserError, match=f"^{re.escape(str(path))}: {message}"):
            read_inputs(path, task)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its mode")
def test_an_unreadable_file_says_so(task, tmp_path):
    path = tmp_path / "secret.npy"
    np.save(path, valid_sample(task.input_spec))
    path.chmod(0)
    with pytest.raises(UserError, match=r"secret\.npy: cannot be read \(Permission denied\)"):
        read_inputs(path, task)


def test_inputs_over_the_byte_limit_are_refused_unread(task, tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", valid_sample(task.input_spec))
    size = (tmp_path / "x.npy").stat().st_size
    monkeypatch.setattr(predict, "MAX_FILE_BYTES", size - 1)
    with pytest.raises(UserError, match=f"x.npy: over {size - 1:,} bytes, the limit for one input"):
        read_inputs(tmp_path / "x.npy", task)
    with pytest.raises(UserError, match="<stdin>: over"):
        read_limited(io.BytesIO((tmp_path / "x.npy").read_bytes()), "<stdin>")
    monkeypatch.setattr(predict, "MAX_FILE_BYTES", size)
    assert len(read_inputs(tmp_path / "x.npy", task)) == 1


def test_the_sample_limit_follows_the_one_value_limit(task_name, task, splits, tmp_path, monkeypatch):
    """Three samples' worth of values: a native file (CSV rows) or .npy of four is refused, and the
    file of three is read."""
    monkeypatch.setattr(base, "MAX_VALUES", 3 * task.input_spec.size)
    assert task.input_spec.max_samples == 3
    for count, folder in ((3, tmp_path / "three"), (4, tmp_path / "four")):
        folder.mkdir()
        np.save(folder / "x.npy", splits.test.inputs[:count])
        paths = [folder / "x.npy", write_native_file(task_name, splits.test.inputs[:count], folder)]
        for path in {p for p in paths if p.suffix != ".png"}:
            if count == 3:
                assert len(read_inputs(path, task)) == 3
            else:
                message = f"{path.name}: (more than 3|4) samples; one input may hold 3; split it"
                with pytest.raises(UserError, match=message):
                    read_inputs(path, task)


# --- CSV (breast_cancer) -------------------------------------------------------------------------

ROW = ",".join(["1.5"] * 30)  # a valid row


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (("1," * 10**6 + "1\n").encode(), "line 1 is 2000002 characters long, over the limit of 1920 for 30"),
        (b"1,2,3\n", "row 1 has 3 values, expected 30"),
        ((ROW + "\n" + ROW[:-3] + "abc\n").encode(), "row 2: 'abc' is not a number"),
        ((ROW + "," + "9" * 40).encode(), "row 1 has 31 values, expected 30"),
        (",".join(["nan"] + ["1"] * 29).encode(), "contains NaN or infinite values"),
        (",".join(["1"] * 29 + ["1e999"]).encode(), "contains NaN or infinite values"),
        (b"", "no data rows"),
        (b"\n \n,,\n", "no data rows"),
        (bytes(range(256)) * 4, r"not UTF-8 text \(byte 0x80 at offset 128\); save the CSV as UTF-8"),
        (ROW.encode()[:-3] + b"caf\xe9\n", rf"not UTF-8 text \(byte 0xe9 at offset {len(ROW)}\)"),
        (b"\x01\x02,\x1b[31m\n", r"row 1: '\\x01\\x02' is not a number, and row 1 names none of the"),
        (b"mean radius,bogus\n1,2\n", r"header does not match .*missing \['mean texture', .* and \d+ more"),
    ],
    ids=[
        "huge-line",
        "short-row",
        "not-a-number",
        "long-row",
        "nan",
        "inf",
        "empty",
        "blank",
        "binary",
        "not-utf8",
        "control-characters",
        "bad-header",
    ],
)
def test_hostile_csv_is_one_line(data, message):
    with pytest.raises(UserError) as caught:
        predict.named_samples(data, "x.csv", get_task("breast_cancer"), ".csv")
    text = str(caught.value)
    assert text.startswith("x.csv: ") and "\n" not in text and len(text) < 300, text
    assert re.search(message, text), text


# --- names that would split an output line --------------------------------------------------------


def test_one_line_escapes_control_characters_only():
    assert one_line("new\nline\ttab\x1b[31m\u2028\x85.png") == "new\\nline\\ttab\\x1b[31m\\u2028\\x85.png"
    assert one_line(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"  # a byte the file system did not decode
    for name in ("digit 7.png", "café — 数字.png", r"C:\data\x.png", "<stdin>[3]"):
        assert one_line(name) == name


def test_predictions_come_in_batches(trained, splits, monkeypatch):
    predictor = Predictor(trained.model_path, device="cpu")
    whole = [p.probabilities for p in predictor.predict(splits.test.inputs[:10])]
    monkeypatch.setattr(predict, "BATCH_SIZE", 3)
    batched = [p.probabilities for p in predictor.predict(splits.test.inputs[:10])]
    assert np.allclose(batched, whole, atol=1e-6)


# --- the CLI: every hostile file one line, every good one predicted ------------------------------


def hostile_files(task_name: str, task, folder: Path) -> dict[str, str]:
    """Files `infer` must refuse, each with a fragment of its one-line reason."""
    spec = task.input_spec
    write_npy_header(folder / "huge.npy", (10**10, *spec.shape))
    objects = np.empty(1, dtype=object)
    np.save(folder / "pickle.npy", objects, allow_pickle=True)
    (folder / "folder.npy").mkdir()
    (folder / "loop.npy").symlink_to(folder / "loop.npy")
    cases = {
        "huge.npy": "10,000,000,000 samples; one input may hold",
        "pickle.npy": "holds Python objects",
        "folder.npy": "is a directory",
        "loop.npy": "is a symlink loop",
    }
    if task_name == "digits":
        Image.new("1", (20000, 20000)).save(folder / "bomb.png")
        Image.new("L", (64, 64), 255).save(folder / "tiff.png", format="TIFF")
        cases |= {"bomb.png": "pixels, over the limit of", "tiff.png": "a TIFF image, not PNG/JPEG"}
    if task_name == "breast_cancer":
        (folder / "wide.csv").write_text("1," * 100_000 + "1\n")
        (folder / "latin1.csv").write_bytes(b"caf\xe9\n")
        cases |= {"wide.csv": "over the limit of", "latin1.csv": "not UTF-8 text"}
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["text", "json"])
def test_infer_refuses_hostile_files_one_line_each_and_predicts_the_rest(
    trained, task_name, task, splits, tmp_path, mode
):
    cases = hostile_files(task_name, task, tmp_path)
    good = write_native_file(task_name, splits.test.inputs[:1], tmp_path)
    odd = tmp_path / "new\nline.npy"  # a name that would split an output line
    np.save(odd, splits.test.inputs[:2])
    bad = [tmp_path / name for name in cases]
    paths = [bad[0], good, *bad[1:], odd]
    json_flag = ["--json"] if mode == "json" else []
    result = run("infer", "--device", "cpu", "--model", trained.model_path, *json_flag, *paths)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = result.stderr.splitlines()
    assert len(errors) == len(cases), result.stderr
    for line, (name, message) in zip(errors, cases.items(), strict=True):
        assert line.startswith(f"{PACKAGE}: error: {tmp_path / name}: ") and message in line, line
    good_names = [str(good)] if good.suffix == ".png" else [f"{good}[0]"]
    odd_names = [f"{odd}[0]", f"{odd}[1]"]
    if mode == "json":
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [line["input"] for line in lines] == good_names + odd_names
    else:
        lines = result.stdout.splitlines()
        escaped = [name.replace("\n", "\\n") for name in good_names + odd_names]
        assert [line.rsplit(": ", 1)[0] for line in lines] == escaped, result.stdout
