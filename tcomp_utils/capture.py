"""One calibration capture for every method: what chosen modules see on calibration batches,
real tokens only, in one pass of the whole model or block by block.

**Padding.** A module inside a layer stack sees hidden states shaped (batch, seq, features); only
the rows of real tokens are kept, by the mask of the batch for that place: ``attention_mask`` in
encoders, decoder-only models and a seq2seq encoder, and for the cross-attention key/value
projections (which read the encoder's states); ``decoder_attention_mask`` in a seq2seq decoder and
its LM head (every position when the batch has none). Inputs whose leading shape is not
(batch, seq), such as a pooler or a classifier head (one row per sequence), are kept whole.

**Two ways to run.**

* :func:`stream` / :func:`capture_inputs`: one forward pass of the model per batch, forward hooks
  on the targets; ``stream`` hands each batch's rows to a callback (a Hessian or a running mean
  need not keep them), ``capture_inputs`` concatenates them.
* :func:`sequential`: block by block in forward order (GPTQ's protocol; also what ID pruning and
  module-level fine-tuning need). The inputs of the first block holding a target are recorded
  once; each block holding a target is then handed to the caller with the inputs it receives
  *now*, and after the caller is done (it may have compressed the block) the block is run again
  to give the next block its inputs. So each block is calibrated on the outputs of the blocks
  already compressed before it.

**Checks.** Both ways check every batch's lengths against the model's absolute position tables
(:func:`check_lengths`) before the first pass, so a too long batch is refused with its length,
the limit and the fix instead of failing deep inside the model. Methods that run the model
themselves call it too, and :func:`check_labels` when they use the model's own loss.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from . import adapters, timing

Sink = Callable[[str, torch.Tensor], None]


def token_mask(batch: dict, stack: str | None = None, role: str | None = None,
               seq2seq: bool = False) -> torch.Tensor | None:
    """The (batch × seq) mask of real tokens for the inputs of a module of ``role`` in ``stack``
    (None: every position is real)."""
    if seq2seq and role not in ("cross_key", "cross_value") and (stack == "decoder" or role == "lm_head"):
        return batch.get("decoder_attention_mask")
    return batch.get("attention_mask")


def real_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``x`` (..., features) at real tokens: ``mask`` (batch × seq) applies when it matches
    x's leading shape; otherwise every row is kept. Returns (rows × features)."""
    if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
        return x[mask.to(device=x.device, dtype=torch.bool)]
    return x.reshape(-1, x.shape[-1])


def is_seq2seq(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


# absolute position tables (learned or sinusoidal), by the names transformers gives them; models
# with relative (T5), rotary (Llama) or ALiBi positions have none and no hard length limit
_POSITION_TABLES = ("position_embeddings", "position_embedding", "wpe", "embed_positions")


def position_limits(model: nn.Module) -> dict[str, int]:
    """``{path: n}``: each absolute position table of ``model`` and the most tokens it covers."""
    limits = {}
    for path, module in model.named_modules():
        parent, _, name = path.rpartition(".")
        if not (isinstance(module, nn.Embedding) and name in _POSITION_TABLES):
            continue
        n = module.num_embeddings - getattr(module, "offset", 0)  # OPT, BART: position ids shifted by 2
        roberta_like = hasattr(model.get_submodule(parent), "create_position_ids_from_input_ids")
        if roberta_like and module.padding_idx is not None:
            n -= module.padding_idx + 1  # RoBERTa: positions start after the padding id
        limits[path] = n
    return limits


def check_lengths(model: nn.Module, batches: Iterable[dict]) -> None:
    """Every batch's sequences must fit the model's absolute position tables (the encoder's or a
    decoder-only model's for ``input_ids``; a seq2seq decoder's for ``decoder_input_ids``, else
    ``labels``, which it is fed shifted)."""
    limits = position_limits(model)
    if not limits:
        return
    seq2seq = is_seq2seq(model)
    for i, batch in enumerate(batches):
        for path, limit in limits.items():
            keys = ("decoder_input_ids", "labels") if seq2seq and "decoder" in path.split(".") else ("input_ids",)
            key = next((k for k in keys if isinstance(batch.get(k), torch.Tensor) and batch[k].ndim == 2), None)
            if key is not None and batch[key].shape[1] > limit:
                raise ValueError(f"calibration batch {i}: {key} has {batch[key].shape[1]} tokens, but "
                                 f"{type(model).__name__} has positions for at most {limit} ({path}); cut the "
                                 f"calibration sequences to at most {limit} tokens (e.g. tokenizer(..., "
                                 f"truncation=True, max_length={limit}))")


def check_labels(model: nn.Module, batches: list[dict], method: str) -> None:
    """For ``method``, driven by the model's own loss: every batch holds ``labels``; the model has
    a task head that computes a loss from them (its forward takes ``labels``); integer labels are
    classes it has (token ids of its vocabulary for a language model; -100 marks ignored positions)."""
    if any("labels" not in b for b in batches):
        raise ValueError(f"{method} needs calibration batches with 'labels' (the task's labels, or the input ids "
                         "for a language model)")
    name = type(model).__name__
    if "labels" not in inspect.signature(model.forward).parameters:
        raise ValueError(f"{method} needs the task loss, but {name} has no task head: it takes no 'labels' and "
                         "returns no loss. Pass the model with its head (e.g. AutoModelForSequenceClassification "
                         "for a classifier, AutoModelForCausalLM for a language model)")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    if head is not None:  # a language model: labels are token ids
        n = getattr(head, "out_features", None) or config.vocab_size
        what = f"token ids of {name}'s vocabulary"
    else:  # a classifier: integer labels are classes unless the config says regression / multi-label
        n, problem = getattr(config, "num_labels", None), getattr(config, "problem_type", None)
        if n is None or problem not in (None, "single_label_classification") or (problem is None and n == 1):
            return
        what = f"{name}'s {n} labels (config.num_labels)"
    for i, b in enumerate(batches):
        labels = b["labels"]
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
            continue
        bad = labels[(labels != -100) & ((labels < 0) | (labels >= n))]
        if bad.numel():
            raise ValueError(f"calibration batch {i}: label {int(bad[0])} is out of range: labels must be "
                             f"{what}, 0..{n - 1} (or -100 for an ignored position)")


def forward(model: nn.Module, batch: dict):
    """``model(**batch)`` with no key/value cache (so replayed blocks share no cache object)."""
    kwargs = dict(batch)
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kwargs["use_cache"] = False
    return model(**kwargs)


def _first(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))


def _main_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _hooks(targets: list[adapters.RoleModule], sink: Sink, mask_of: Callable[[adapters.RoleModule], torch.Tensor | None],
           outputs: bool) -> list:
    def make(rm):
        def hook(module, args, kwargs, output):
            x = _main_output(output) if outputs else _first(args, kwargs)
            sink(rm.path, real_rows(x.detach(), mask_of(rm)))
        return hook
    return [rm.module.register_forward_hook(make(rm), with_kwargs=True) for rm in targets]


@torch.no_grad()
def stream(model: nn.Module, targets: list[adapters.RoleModule], batches: Iterable[dict], sink: Sink,
           outputs: bool = False) -> None:
    """Run ``model`` on each batch and call ``sink(path, rows)`` with the real-token inputs (or
    outputs) of every target module, rows × features, batch after batch."""
    batches = list(batches)
    check_lengths(model, batches)
    seq2seq, current = is_seq2seq(model), {}
    handles = _hooks(targets, sink, lambda rm: token_mask(current["batch"], rm.stack, rm.role, seq2seq), outputs)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            current["batch"] = batch
            forward(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def capture_inputs(model: nn.Module, targets: list[adapters.RoleModule], batches: Iterable[dict],
                   outputs: bool = False) -> dict[str, torch.Tensor]:
    """``{path: rows × features}``: the real-token inputs (or outputs) of each target over all batches."""
    seen: dict[str, list[torch.Tensor]] = {rm.path: [] for rm in targets}
    stream(model, targets, batches, lambda path, x: seen[path].append(x), outputs)
    empty = [p for p, xs in seen.items() if not xs]
    if empty:
        raise ValueError(f"the calibration batches never reached {', '.join(empty)}")
    return {p: torch.cat(xs) for p, xs in seen.items()}


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the inputs it needs are recorded."""


def _run_block(block: nn.Module, hidden: torch.Tensor, other: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = other
    return _main_output(block(hidden, *args, **kwargs))


def _same(a, b) -> bool:
    """Whether two call arguments are the same value (tensors equal in shape, dtype and content;
    other objects identical): decides whether the blocks of a stack share their call arguments."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and (a is b or torch.equal(a, b)))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is None or isinstance(a, (bool, int, float, str)):
        return type(a) is type(b) and a == b
    return a is b


def block_inputs(model: nn.Module, blocks: nn.ModuleList, first: int, last: int,
                 batches: list[dict]) -> tuple[list[torch.Tensor], dict[int, list[tuple[tuple, dict]]]]:
    """Run the model on each batch; return the hidden states entering block ``first`` (one per
    batch) and, for blocks ``first..last``, their other inputs (args after the hidden states and
    kwargs: masks, position embeddings, encoder states...), which compressing blocks does not change.

    The first batch runs up to block ``last``. When every block got the same other inputs on it
    (Llama, BERT: masks and rotary tables computed once per forward), the blocks of this stack
    share their call arguments, and the other batches stop at block ``first`` (one block's work per
    batch instead of ``last − first + 1``); otherwise (T5's position bias, computed by block 0 and
    passed on; alternating local/global masks) every batch runs up to block ``last``."""
    hidden, other = [], {i: [] for i in range(first, last + 1)}
    stop_at = [last]

    def pre_hook(i):
        def hook(module, args, kwargs):
            if i == first:
                hidden.append(_first(args, kwargs))
            other[i].append((args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}))
            if i == stop_at[0]:
                raise _Stop
        return hook

    handles = [blocks[i].register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i in range(first, last + 1)]
    shared = False
    try:
        with torch.no_grad():
            for b, batch in enumerate(batches):
                try:
                    forward(model, batch)
                except _Stop:
                    pass
                if b == 0 and last > first:
                    shared = all(_same(other[i][0], other[first][0]) for i in range(first + 1, last + 1))
                    stop_at[0] = first if shared else last
    finally:
        for h in handles:
            h.remove()
    if shared:
        other = {i: other[first] for i in range(first, last + 1)}
    return hidden, other


@dataclass
class BlockStep:
    """One block of :func:`sequential`: where it is, and the inputs it receives on each batch."""

    stack: str
    layer: int
    path: str
    block: nn.Module
    hidden: list[torch.Tensor]                 # hidden states entering the block, one per batch
    other: list[tuple[tuple, dict]]            # its other inputs, one per batch
    batches: list[dict]
    seq2seq: bool

    @torch.no_grad()
    def run(self, targets: Iterable[adapters.RoleModule] = (), sink: Sink | None = None,
            outputs: bool = False, stop: bool = False) -> list[torch.Tensor]:
        """Run the block on every batch's inputs, feeding the real-token inputs (or outputs) of
        ``targets`` (modules inside the block) to ``sink``; return the block's outputs per batch.
        ``stop``: end each batch's pass once every target has run (the rest of the block is not
        needed; nothing is returned)."""
        targets, current = list(targets), {}
        mask_of = lambda rm: token_mask(self.batches[current["b"]], self.stack, rm.role, self.seq2seq)  # noqa: E731
        handles = _hooks(targets, sink, mask_of, outputs) if targets else []
        if stop and targets:
            def done(module, args, output):
                current["left"].discard(module)
                if not current["left"]:
                    raise _Stop
            handles += [rm.module.register_forward_hook(done) for rm in targets]
        try:
            out = []
            for b, h in enumerate(self.hidden):
                current["b"], current["left"] = b, {rm.module for rm in targets}
                try:
                    out.append(_run_block(self.block, h, self.other[b]))
                except _Stop:
                    pass
            return [] if stop else out
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def input_groups(self, targets: Iterable[adapters.RoleModule]) -> list[list[adapters.RoleModule]]:
        """``targets`` grouped by the input they read, groups in the order the block first calls
        them (one pass on the first batch): in a Llama block q/k/v, then o, then gate/up, then down.
        Quantizing group by group, each on the inputs the groups before it give (GPTQ's "true
        sequential"), needs this order; targets the block never calls come last, one group each."""
        targets, seen = list(targets), []

        def make(rm):
            def hook(module, args, kwargs):
                if all(r is not rm for r, _ in seen):
                    seen.append((rm, _first(args, kwargs)))
            return hook

        handles = [rm.module.register_forward_pre_hook(make(rm), with_kwargs=True) for rm in targets]
        try:
            _run_block(self.block, self.hidden[0], self.other[0])
        finally:
            for h in handles:
                h.remove()
        groups: list[tuple[list[adapters.RoleModule], torch.Tensor]] = []
        for rm, x in seen:
            same = next((grp for grp, y in groups if y is x or (y.shape == x.shape and torch.equal(y, x))), None)
            if same is None:
                groups.append(([rm], x))
            else:
                same.append(rm)
        called = {id(rm) for rm, _ in seen}
        return [grp for grp, _ in groups] + [[rm] for rm in targets if id(rm) not in called]

    def inputs(self, targets: Iterable[adapters.RoleModule], outputs: bool = False) -> dict[str, torch.Tensor]:
        """``{path: rows × features}`` of ``targets`` in this block on its current inputs."""
        targets = list(targets)
        seen: dict[str, list[torch.Tensor]] = {rm.path: [] for rm in targets}
        self.run(targets, lambda path, x: seen[path].append(x), outputs)
        return {p: torch.cat(xs) for p, xs in seen.items()}

    def token_rows(self, x: list[torch.Tensor], role: str | None = None) -> torch.Tensor:
        """Real-token rows of per-batch block tensors ``x`` (e.g. the outputs of :meth:`run`)."""
        return torch.cat([real_rows(t, token_mask(self.batches[b], self.stack, role, self.seq2seq))
                          for b, t in enumerate(x)])


def sequential(model: nn.Module, batches: list[dict], targets: list[adapters.RoleModule]) -> Iterator[BlockStep]:
    """Yield, stack by stack in forward order, each block holding one of ``targets`` (modules with
    a stack and a layer), with the inputs it receives from the blocks before it as they are when
    it is reached: blocks changed by the caller while they were yielded pass on their new outputs."""
    check_lengths(model, batches)
    seq2seq = is_seq2seq(model)
    was_training = model.training
    model.eval()
    try:
        for stack_name, (stack_path, blocks) in adapters.layer_stacks(model).items():
            layers = sorted({rm.layer for rm in targets if rm.stack == stack_name and rm.layer is not None})
            if not layers:
                continue
            first, last = layers[0], layers[-1]
            with timing.phase("capture"):
                hidden, other = block_inputs(model, blocks, first, last, batches)
            for i in range(first, last + 1):
                step = BlockStep(stack_name, i, f"{stack_path}.{i}", blocks[i], hidden, other[i], batches, seq2seq)
                if i in layers:
                    yield step
                if i < last:
                    with timing.phase("rerun"):
                        hidden = step.run()
    finally:
        model.train(was_training)
