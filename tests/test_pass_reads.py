"""A decoder pass reads the device once, and copies to it once: counted on the CPU.

On CUDA the host waits for the GPU whenever it reads device data: ``.item()``, ``.tolist()``,
``bool(tensor)``, and the ops that must know a result's size before they can make it (a boolean
mask's ``nonzero``, ``masked_select``, ``unique``; ``multinomial``'s own check of its argument).
Python data made into a tensor (``torch.tensor(list)``, indexing with a list) is a copy to the
device each time. None of these is visible as a wait on the CPU, so the test counts them where
torch lets a program see every call: a ``TorchFunctionMode`` for the methods that read and the
copies to a device, a ``TorchDispatchMode`` for the ops that read inside. The pass is the loop's
own (pass_plan.make_plan, forward.rearrange, forward.step, pass_plan.advance) on the real model,
for a beam search, a greedy search and a sampled one at once, in both attention forms.
On CUDA, tests/test_cuda.py runs the same pass under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from whisper.model import Whisper
from whisper.tokenizer import get_tokenizer

from asr_server.engine import forward, kv_cache
from asr_server.engine.audio_decoding import decode_wav
from asr_server.engine.pass_plan import Entry, advance, make_plan
from asr_server.engine.search import SearchSpec, WindowSearch
from asr_server.engine.token_choice import Rules, sample, top_k
from asr_server.engine.word_timing import mel_of
from tests.harness import load_manifest

from .conftest import Engines

READING_METHODS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu",
                   "__array__", "__format__", "__repr__", "__iter__"}
# The ops that read device data before they can return (a result whose size depends on values, or
# an argument check), as torch implements them on CUDA.
READING_OPS = {"nonzero", "masked_select", "_local_scalar_dense", "is_nonzero", "equal", "unique",
               "_unique", "_unique2", "unique_consecutive", "unique_dim", "multinomial", "repeat_interleave",
               "allclose", "masked_scatter", "_assert_async", "bincount", "histc"}
HOST_DATA_OPS = {"lift_fresh", "lift_fresh_copy"}  # torch.tensor(python data), an index given as a list


class DeviceTraffic(TorchFunctionMode):
    """Counts reads of device data and copies to the device, by what made them."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()
        self.copies: Counter[str] = Counter()

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in READING_METHODS:
            self.reads[name] += 1
        elif name in {"to", "cuda", "pin_memory", "copy_"} and _names_a_device([*args[1:], *kwargs.values()]):
            self.copies[name] += 1
        elif name in {"__getitem__", "__setitem__"} and _indexes_with_host_data(args[1]):
            self.copies[f"{name} with a list or a boolean mask"] += 1
        return func(*args, **kwargs)


class DeviceTrafficInside(TorchDispatchMode):
    """Counts the ops that read device data inside, and Python data made into tensors."""

    def __init__(self, traffic: DeviceTraffic) -> None:
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in READING_OPS or (name in {"index", "index_put", "index_put_"} and _bool_index(args)):
            self.traffic.reads[f"aten.{name}"] += 1
        if name in HOST_DATA_OPS:
            self.traffic.copies[f"aten.{name}"] += 1
        return func(*args, **(kwargs or {}))


def _names_a_device(values: list[Any]) -> bool:
    return any(isinstance(v, torch.device | str) for v in values)  # .to(device), .to("cuda")


def _indexes_with_host_data(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, list) or (isinstance(p, torch.Tensor) and p.dtype == torch.bool) for p in parts)


def _bool_index(args: Any) -> bool:
    return len(args) > 1 and any(isinstance(i, torch.Tensor) and i.dtype in {torch.bool, torch.uint8}
                                 for i in args[1] if i is not None)


@contextmanager
def counted() -> Iterator[DeviceTraffic]:
    traffic = DeviceTraffic()
    with traffic, DeviceTrafficInside(traffic):
        yield traffic


def test_the_count_sees_what_would_wait_on_a_gpu() -> None:
    """The counters can fail: each kind of read and copy the pass once had is seen."""
    x = torch.randn(4, 50)
    with counted() as traffic:
        bool(x.isneginf().any())
        x[x > 0] = 0.0
        x[:, [1, 2, 3]] = 0.0
        torch.distributions.Categorical(logits=x).sample()  # type: ignore[no-untyped-call]
        x.argmax(dim=-1).tolist()
        torch.tensor([1, 2, 3])
    assert traffic.reads["__bool__"] >= 2  # ours, and Categorical's argument check
    assert traffic.reads["aten.multinomial"] == 1 and traffic.reads["tolist"] == 1
    assert traffic.reads["aten.index_put_"] == 1
    assert traffic.copies["__setitem__ with a list or a boolean mask"] == 2
    assert traffic.copies["aten.lift_fresh"] >= 1


def test_sampling_draws_what_whispers_categorical_draws() -> None:
    logits = torch.randn(6, 51866) * 4 / 0.4
    torch.manual_seed(11)
    expected = torch.distributions.Categorical(logits=logits).sample()  # type: ignore[no-untyped-call]
    torch.manual_seed(11)
    assert torch.equal(sample(logits), expected)


def test_each_requests_rows_draw_from_its_own_generator() -> None:
    """Two requests' sampled rows in one pass: each draws what it draws alone, from its own generator,
    whichever goes first; torch's global generator is not moved."""
    ours, theirs = torch.randn(5, 51866) * 4 / 0.4, torch.randn(5, 51866) * 4 / 0.6
    torch.manual_seed(11)
    expected = torch.distributions.Categorical(logits=ours).sample()  # type: ignore[no-untyped-call]
    state = torch.random.get_rng_state()
    alone = sample(ours, [(torch.Generator().manual_seed(11), 5)])
    first = sample(torch.cat([ours, theirs]), [(torch.Generator().manual_seed(11), 5),
                                               (torch.Generator().manual_seed(3), 5)])
    second = sample(torch.cat([theirs, ours]), [(torch.Generator().manual_seed(3), 5),
                                                (torch.Generator().manual_seed(11), 5)])
    assert torch.equal(alone, expected) and torch.equal(first[:5], expected)
    assert torch.equal(second[5:], expected)
    assert torch.equal(first[5:], second[:5])
    assert torch.equal(torch.random.get_rng_state(), state)


def test_top_k_finds_what_topk_finds() -> None:
    generator = torch.Generator().manual_seed(7)
    for width in (51865, 51866, 1000, 7):
        x = torch.log_softmax(torch.randn(5, width, generator=generator) * 4, dim=-1)
        x[:, ::3] = -float("inf")  # suppressed tokens, as the logit rules leave them
        expected, found = x.topk(6), top_k(x, 6)
        assert torch.equal(found[0], expected.values) and torch.equal(found[1], expected.indices)
        x[4, 6:] = -float("inf")  # a row with fewer than six finite: every index still a real token
        values, indices = top_k(x, 6)
        assert torch.equal(values, x.topk(6).values) and int(indices.max()) < width
        assert all(len(set(row)) == 6 for row in indices.tolist())
        assert torch.equal(x.gather(1, indices), values)


def decoding_mid_way(model: Whisper, batched: bool, dtype: torch.dtype = torch.float32,
                     specs: tuple[SearchSpec, ...] = (SearchSpec(0.0, beam_size=5), SearchSpec(0.0),
                                                      SearchSpec(0.4, best_of=5)),
                     scratch: bool = False) -> tuple[kv_cache.Caches, Rules, list[Entry]]:
    """Three windows of real speech, each at its first token: beam 5, greedy, sampled (on the model's
    device, the caches in ``dtype``)."""
    device = model.decoder.token_embedding.weight.device
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages, language="en",
                              task="transcribe")
    rules = Rules(tokenizer, model.dims.n_audio_ctx)
    caches = kv_cache.Caches(model, 3, 5, dtype, batched, scratch)
    clips = [c for c in load_manifest() if c.kind == "short" and c.lang == "en"][: len(specs)]
    prompt = list(tokenizer.sot_sequence)
    entries = []
    for clip, spec in zip(clips, specs, strict=True):
        samples = torch.from_numpy(decode_wav(clip.path.read_bytes(), 60).samples)
        mel = mel_of(samples.to(device), model.dims.n_mels)[:, :3000].to(dtype)
        slot = caches.open(forward.encode(model, mel.unsqueeze(0)))
        search = WindowSearch(spec, prompt, 0, 224, model.dims.n_text_ctx)
        logits = forward.prefill(caches, slot, prompt, search.rows, (0, len(prompt) - 1))
        advance(rules, make_plan(caches, rules, [Entry(slot, search)]),
                logits[1:].expand(search.rows, -1).clone())
        entries.append(Entry(slot, search))
    return caches, rules, entries


def one_pass(caches: kv_cache.Caches, rules: Rules, entries: list[Entry]) -> tuple[list[Entry], int]:
    """The loop's pass; returns the entries for the next one, and how many rows it moved."""
    plan = make_plan(caches, rules, entries)
    forward.rearrange(caches, plan)
    moves = advance(rules, plan, forward.step(caches, plan))
    return [Entry(e.slot, e.search, moved) for e, moved in zip(entries, moves, strict=True)], plan.moved


def moving(entries: list[Entry]) -> bool:
    return any(e.moves is not None and list(e.moves) != list(range(len(e.moves))) for e in entries)


@pytest.mark.parametrize("batched", [False, True], ids=["per-window", "batched"])
def test_a_pass_copies_to_the_device_once_and_reads_it_once(engines: Engines, batched: bool) -> None:
    model = engines.model()
    with torch.inference_mode():
        caches, rules, entries = decoding_mid_way(model, batched)
        for _ in range(30):  # until the beams diverge: the counted pass moves rows in the cache too
            entries, _ = one_pass(caches, rules, entries)
            if moving(entries):
                break
        assert moving(entries)
        before = [e.search.length for e in entries]
        with counted() as traffic:
            entries, moved = one_pass(caches, rules, entries)
    assert moved > 0
    assert [e.search.length for e in entries] == [n + 1 for n in before]  # every search moved on
    assert dict(traffic.reads) == {"tolist": 1}
    # the one packed array made a tensor (torch.from_numpy) and copied to the device (.to)
    assert dict(traffic.copies) == {"aten.lift_fresh": 1, "to": 1}
