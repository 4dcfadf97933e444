"""The ``tcomp`` command: a tiny model compressed, probed and scored from the shell, and every bad
argument refused before any work with one line naming it and what is allowed (exit status 2)."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_bert, tiny_llama
from tcomp_utils import budget, cli, metrics, registry, serialize

PIPELINE = "structured(mu=0.7) + gptq(bits=4)"


def _tokenizer():
    """A word-level fast tokenizer over the tiny models' 100 ids: "w0" ... "w98" (EOS "w98")."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, **{f"w{i}": i + 1 for i in range(99)}}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="w98")


def _words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(99)}" for _ in range(n))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama saved as a Hugging Face folder with its tokenizer, calibration and test texts,
    and a previous save of it (a tcomp.json folder)."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = tiny_llama()
    model.save_pretrained(root / "tiny")
    _tokenizer().save_pretrained(root / "tiny")
    (root / "cal.txt").write_text(_words(3000, 0))
    (root / "test.txt").write_text(_words(600, 1))
    serialize.save_compressed(model, root / "saved")
    serialize.save_compressed(tiny_bert(), root / "bert")
    return {"root": root, "tiny": root / "tiny", "cal": root / "cal.txt", "test": root / "test.txt",
            "saved": root / "saved", "bert": root / "bert"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TCOMP_CACHE", str(tmp_path / "cache"))  # token ids are cached there


def _shell(args: list[str], tmp_path: Path, console: bool = False) -> subprocess.CompletedProcess:
    """``python -m tcomp_utils.cli ARGS`` (or the installed ``tcomp`` console script), one thread, offline."""
    script = Path(sys.executable).with_name("tcomp")
    cmd = [str(script)] if console else [sys.executable, "-m", "tcomp_utils.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TCOMP_CACHE": str(tmp_path / "cache")}
    return subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])


def test_a_tiny_model_is_compressed_probed_and_scored_from_the_shell(files, tmp_path):
    out = tmp_path / "small"
    done = _shell(["compress", str(files["tiny"]), PIPELINE, "--calibration", str(files["cal"]), "--out", str(out),
                   "--seq-len", "32", "--samples", "8"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"saved {out}" in done.stdout and "MACs per token" in done.stdout
    assert "structured: " in done.stderr and "gptq: " in done.stderr  # what each step replaced
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "tcomp.json"]

    # the save loads, holds the compressed modules and fits the budget: at most 70 % of the dense MACs
    loaded = serialize.load_compressed(out)
    dense = budget.footprint(tiny_llama())
    small = budget.footprint(loaded)
    assert small.macs <= 0.7 * dense.macs and small.params < dense.params and small.bytes < 0.3 * dense.bytes
    assert any(registry.is_registered_module(m) for m in loaded.modules())

    # probe through the console script when it is installed (pip install -e .), else python -m
    console = Path(sys.executable).with_name("tcomp").is_file()
    done = _shell(["probe", str(out), "--runs", "2", "--warmup", "0"], tmp_path, console=console)
    assert done.returncode == 0, done.stderr
    probed = json.loads(done.stdout)
    counted = budget.footprint(loaded, probed["seq_len"])
    assert (probed["saved_params"], probed["saved_bytes"], probed["saved_macs"]) == \
        (counted.params, counted.bytes, counted.macs)
    assert probed["seq_len"] == 64 and probed["latency_ms"] > 0 and probed["peak_mb"] > 0  # 64: the model's positions

    # eval: the perplexity of a text file, the number computed here from the same windows
    done = _shell(["eval", str(out), "--task", str(files["test"]), "--seq-len", "32", "--max-tokens", "320"], tmp_path)
    assert done.returncode == 0, done.stderr
    scored = json.loads(done.stdout)
    ids = _tokenizer()(files["test"].read_text(), return_tensors="pt").input_ids[0]
    expected = metrics.perplexity(loaded, ids, seq_len=32, max_tokens=320, progress=False)
    assert (scored["eval_tokens"], scored["windows"]) == (expected.tokens, 10)
    assert math.isclose(scored["perplexity"], expected.perplexity, rel_tol=1e-5)


# ------------------------------------------------------------------------------------ error paths
@pytest.fixture
def no_work(monkeypatch):
    """Any attempt to load a model, compress, save or probe fails the test: errors come first."""
    from tcomp_utils import models, pipeline, probe

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")
    for owner, name in ((models, "load_model"), (pipeline, "apply"), (serialize, "save_compressed"),
                        (serialize, "load_compressed"), (probe, "probe")):
        monkeypatch.setattr(owner, name, refuse)


def _refused(capsys, argv: list[str], *needles: str) -> str:
    """``tcomp ARGV`` exits with status 2 and one line on stderr holding every needle, no traceback."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tcomp {argv[0]}: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _state(folder: Path) -> dict | None:
    """What ``folder`` holds (None: absent): names, sizes and modification times."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _compress(files, out, pipeline=PIPELINE, calibration="cal", *extra):
    cal = [] if calibration is None else ["--calibration", str(files.get(calibration, calibration))]
    return ["compress", str(files["tiny"]), pipeline, *cal, "--out", str(out), "--seq-len", "32", *extra]


def _case(name: str, *needles: str, **where) -> pytest.param:
    return pytest.param(dict(where, needles=needles), id=name)


@pytest.mark.parametrize("case", [
    # the model
    _case("missing-model", "model '/no/such/model' does not exist", "a model folder, a .gguf file",
          model="/no/such/model"),
    _case("model-not-gguf", "is a file but not a .gguf file", "give a model folder or a .gguf file", model="cal"),
    # the pipeline: unparsable, unknown method or field, a budget outside (0, 1], an order refused
    _case("unparsable", "cannot parse 'structured(mu=0.7) +'", "a pipeline is dense, or",
          pipeline="structured(mu=0.7) +"),
    _case("unknown-method", "unknown method 'gtpq' (did you mean 'gptq'?)", "registered: ", "rtn",
          pipeline="gtpq(bits=4)"),
    _case("unknown-field", "unknown option 'bitz'", "allowed: roles, layers, bits", pipeline="gptq(bitz=4)"),
    _case("budget-above-1", "mu must be a fraction of the dense model's MACs in (0, 1], got 1.5",
          pipeline="structured(mu=1.5)"),
    _case("budget-0", "in (0, 1], got 0", pipeline="structured(mu=0) + gptq(bits=4)"),
    _case("order", "step 2, rtn(bits=8), cannot follow step 1", pipeline="tucker(ratio=2) + rtn(bits=8)"),
    # calibration: missing, an unknown task, a task of another kind, bad files
    _case("no-calibration", "step(s) structured, gptq need calibration data", "a UTF-8 text file or a task",
          calibration=None),
    _case("unknown-task", "--calibration 'no-such-task' is not a file and not a task", "austen", "tweets",
          calibration="no-such-task"),
    _case("translation-task", "--calibration 'de-en' is a translation task", "austen", calibration="de-en"),
    _case("missing-file", "missing.txt' does not exist", "give a UTF-8 text file or a task name",
          calibration="missing.txt"),
    _case("binary-file", "binary.bin' is not readable UTF-8 text", calibration="binary.bin"),
    _case("empty-file", "empty.txt' holds no text", calibration="empty.txt"),
    _case("short-file", "--calibration", "short.txt", "the text has 20 tokens, too few for segments of 32",
          "a smaller --seq-len", calibration="short.txt"),
    # sizes
    _case("seq-len", "--seq-len 128 is not allowed; allowed: [2, 64]", "64 positions", extra=["--seq-len", "128"]),
    _case("samples", "--samples 0 is not allowed; allowed: an integer >= 1", extra=["--samples", "0"]),
])
def test_a_bad_compress_argument_is_one_line_before_any_work(files, tmp_path, capsys, no_work, case):
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "short.txt").write_text(_words(20, 2))
    named = {**files, **{n: tmp_path / n for n in ("missing.txt", "binary.bin", "empty.txt", "short.txt")}}
    out = tmp_path / "out"
    argv = _compress(named, out, case.get("pipeline", PIPELINE), case.get("calibration", "cal"), *case.get("extra", []))
    if "model" in case:
        argv[1] = str(named.get(case["model"], case["model"]))
    _refused(capsys, argv, *case["needles"])
    assert not out.exists()


def test_an_out_folder_that_is_not_a_save_a_previous_save_or_a_file_is_left_as_it_is(files, tmp_path, capsys,
                                                                                       no_work):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.md").write_text("keep me")
    before = _state(other)
    _refused(capsys, _compress(files, other), f"{other} is not empty and is not a previous save (todo.md)",
             "choose an empty or new folder")
    assert _state(other) == before
    before = _state(files["saved"])
    _refused(capsys, _compress(files, files["saved"]), f"--out '{files['saved']}' holds a previous save",
             "pass --overwrite to replace it")
    assert _state(files["saved"]) == before
    _refused(capsys, _compress(files, files["cal"]), f"{files['cal']} exists and is not a folder")


def test_argparse_errors_exit_2_with_the_usage(files, capsys):
    assert cli.main(["compress", str(files["tiny"]), PIPELINE]) == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert cli.main(["shrink"]) == 2
    assert "invalid choice: 'shrink'" in capsys.readouterr().err


def test_probe_and_eval_refuse_what_they_cannot_read_or_score(files, tmp_path, capsys, no_work):
    (tmp_path / "empty").mkdir()
    _refused(capsys, ["probe", str(tmp_path / "empty")], "holds no saved model (tcomp.json)")
    _refused(capsys, ["probe", str(files["saved"]), "--runs", "0"], "--runs 0 is not allowed; allowed: an integer >= 1")
    _refused(capsys, ["probe", str(files["saved"]), "--seq-len", "65"], "--seq-len 65 is not allowed; allowed: [2, 64]")
    _refused(capsys, ["eval", str(tmp_path / "empty"), "--task", "austen"], "holds no saved model (tcomp.json)")
    _refused(capsys, ["eval", str(files["saved"]), "--task", "no-such-task"],
             "--task 'no-such-task' is not a file and not a task", "austen", "tweets")
    _refused(capsys, ["eval", str(files["saved"]), "--task", "de-en"], "is a translation task")
    _refused(capsys, ["eval", str(files["saved"]), "--task", "tweets"],
             "needs a sequence classifier with 2 output(s)", "LlamaForCausalLM (causal-lm)")
    _refused(capsys, ["eval", str(files["saved"]), "--task", str(files["test"]), "--seq-len", "100"],
             "--seq-len 100 is not allowed; allowed: [2, 64]")
    _refused(capsys, ["eval", str(files["bert"]), "--task", str(files["test"])],
             "is scored by perplexity, which needs a causal LM", "BertForSequenceClassification")
    # a model built in memory records no folder it came from: no tokenizer to take
    _refused(capsys, ["eval", str(files["saved"]), "--task", str(files["test"]), "--seq-len", "32"],
             "records no model it was compressed from", "pass --tokenizer MODEL")


# ----------------------------------------------------------------------------- methods and --help
def test_methods_lists_every_registered_method_and_the_fields_of_one(capsys):
    assert cli.main(["methods"]) == 0
    listed = capsys.readouterr().out
    rows = registry.methods()
    for name, family in zip(rows.method, rows.family):
        assert any(line.split()[:1] == [name] and family in line for line in listed.splitlines()), name
    assert cli.main(["methods", "gptq"]) == 0
    assert "bits = 4" in capsys.readouterr().out
    _refused(capsys, ["methods", "gtpq"], "unknown method 'gtpq'", "registered: ")


@pytest.mark.parametrize("command", [[], ["methods"], ["compress"], ["probe"], ["eval"]])
def test_every_help_shows_an_example(capsys, command):
    assert cli.main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"\n  tcomp {command[0] if command else ''}" in text
